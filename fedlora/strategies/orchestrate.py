"""One federated run on the server side: discover nodes, run the rounds, checkpoint, export.

The ServerApp calls :func:`run_server` with the Flower ``Grid`` and a validated config. A query
round first learns each node's partition id and rank (from its node config); then Flower's
``Strategy.start`` runs the rounds with :class:`LoraStrategy`. After every round the global state
is checkpointed, so ``resume=<run dir>`` continues a crashed run from its last finished round.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import MetricRecord
from flwr.serverapp import Grid

from fedlora import protocol as P
from fedlora.aggregation import GlobalAdapter, get_aggregator
from fedlora.config.load import node_view, to_yaml
from fedlora.config.schema import ModelConfig, RunConfig
from fedlora.export.adapter import load_exported, save_adapter, save_merged, state_checksum
from fedlora.export.compress import compress_adapter
from fedlora.lora.codec import to_arrayrecord
from fedlora.lora.init import initial_state
from fedlora.lora.state import base_magnitudes
from fedlora.models.build import base_model_loads
from fedlora.results import RunRecorder
from fedlora.results.plots import plot_run
from fedlora.results.views import close_views, open_views
from fedlora.strategies.audit import Auditor
from fedlora.strategies.discovery import discover_nodes
from fedlora.strategies.lora_strategy import LoraStrategy, NodeInfo
from fedlora.strategies.privacy_guard import PrivacyGuard
from fedlora.strategies.run_state import RunFailed, RunProgress
from fedlora.training.central import CentralEvaluator
from fedlora.training.schedule import evaluates

log = logging.getLogger(__name__)


def run_server(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run the whole federation and return the run summary (also written to summary.json).

    A run that stops because too many rounds failed (:class:`RunFailed`) still writes its metric
    files and a summary with ``status: failed`` and the reason, but no adapter: its last good
    round stays in the checkpoint for ``resume=``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        (out_dir / "config.yaml").write_text(to_yaml(cfg))  # a resume keeps the original
    evaluator = CentralEvaluator(cfg, samples_dir=out_dir / "samples")  # causal LM: answers per round
    recorder = RunRecorder(out_dir, cfg.model.task)
    progress = RunProgress(cfg, out_dir)
    shared = {P.CFG_YAML: to_yaml(node_view(cfg)).encode(), P.WIRE_DTYPE: cfg.federation.wire_dtype}
    if evaluator.labels:
        shared[P.LABELS] = evaluator.labels
    t_discovery = time.perf_counter()
    try:
        nodes = discover_nodes(grid, cfg, shared, recorder)
    except RunFailed as err:  # too few valid nodes: a failed run with its reasons, not a traceback
        log.error("run stopped: %s", err)
        recorder.write()
        summary = {"status": "failed", "failure": str(err), "run_dir": str(out_dir), "rounds": 0,
                   "rounds_done": 0, "strategy": cfg.strategy.name,
                   "rejected_replies": len(recorder.rejected)}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    discovery_s = round(time.perf_counter() - t_discovery, 3)  # the query round (touches every node)
    aggregator = get_aggregator(cfg.strategy.name)(
        alpha=cfg.lora.alpha, norm_weighted=cfg.strategy.norm_weighted,
        rank_cap=cfg.strategy.rank_cap, energy=cfg.strategy.energy, init_seed=cfg.lora.init_seed,
        use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora,
    )
    global_rank = max(n.rank for n in nodes.values())
    shapes = evaluator.adapter_shapes(global_rank)
    # DoRA's initial magnitudes are the base weights' column norms (the config check makes sure
    # the server loads the base model: federation.central_eval=true)
    magnitudes = None
    if cfg.lora.use_dora:
        magnitudes = base_magnitudes(evaluator.model_for(global_rank, cfg.lora.alpha))
    aggregator.init_state(GlobalAdapter(
        initial_state(shapes, cfg.lora.init_seed, magnitudes), global_rank, cfg.lora.alpha,
        use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora))
    done = progress.restore(aggregator, recorder) if cfg.resume else 0
    guard = PrivacyGuard(cfg, len(nodes)) if cfg.privacy.enabled else None
    if guard is not None and cfg.resume:
        guard.restore(recorder.rows, recorder.clients, recorder.rejected)
    last = guard.rounds_allowed(cfg.federation.num_rounds) if guard is not None else cfg.federation.num_rounds
    if last < cfg.federation.num_rounds:
        log.warning("privacy: round %d would exceed privacy.target_epsilon=%g (epsilon %.4g at delta %g); "
                    "the run ends after round %d of %d", last + 1, cfg.privacy.target_epsilon,
                    guard.accountant.epsilon_after(last + 1), cfg.privacy.delta, last,  # type: ignore[union-attr]
                    cfg.federation.num_rounds)

    strategy = LoraStrategy(cfg=cfg, aggregator=aggregator, nodes=nodes, recorder=recorder,
                            shared_config=shared, round_offset=done, global_rank=global_rank,
                            auditor=Auditor(out_dir) if cfg.export.audit else None, progress=progress,
                            privacy=guard)

    def end_of_round(server_round: int, _arrays: Any) -> MetricRecord | None:
        rnd = server_round + done
        if server_round == 0 and done > 0:
            return None  # round `done` was evaluated before the crash
        # federation.eval_every: rounds off the schedule skip the evaluator (their row has no eval_*)
        with strategy.clock.measure():
            scheduled = evaluates(rnd, last, cfg.federation.eval_every)
            central = cfg.federation.central_eval and scheduled
            metrics = evaluator.evaluate(aggregator.global_adapter(), rnd) if central else None
        # server_s: the strategy's callbacks and the central evaluation of this round, not the wait
        wall, cpu = strategy.clock.take()
        if server_round > 0:
            recorder.add(server_s=round(wall, 4), server_cpu_s=round(cpu, 4))
        t_record = time.perf_counter()
        row = recorder.end_round(rnd, metrics)
        progress.observe(rnd, row, aggregator)
        every = cfg.export.checkpoint_every
        if every and (rnd % every == 0 or rnd == last):
            progress.checkpoint(rnd, aggregator, recorder)
        if server_round > 0:  # writing the files and the checkpoint; in the files from their next write
            row["record_s"] = round(time.perf_counter() - t_record, 4)
        return MetricRecord(metrics) if metrics else None

    remaining = last - done
    failure = ""
    views = open_views(cfg.progress, cfg.tensorboard, cfg.federation.num_rounds, out_dir, done)
    recorder.listeners += views
    try:
        if remaining > 0:
            strategy.start(grid=grid, initial_arrays=to_arrayrecord(aggregator.global_adapter().state),
                           num_rounds=remaining, timeout=cfg.federation.round_timeout_s,
                           evaluate_fn=end_of_round)
    except RunFailed as err:
        failure = str(err)
        log.error("run stopped: %s", failure)
    finally:
        close_views(views)
        recorder.listeners = [v for v in recorder.listeners if v not in views]
    return _finish(cfg, out_dir, aggregator, evaluator, recorder, nodes, progress,
                   time.perf_counter() - t0, failure, guard, last, discovery_s)


def _finish(cfg: RunConfig, out_dir: Path, aggregator: Any, evaluator: CentralEvaluator,
            recorder: RunRecorder, nodes: dict[int, NodeInfo], progress: RunProgress, seconds: float,
            failure: str = "", guard: PrivacyGuard | None = None, last: int = 0,
            discovery_s: float = 0.0) -> dict[str, Any]:
    recorder.write()
    final = dict(recorder.rows[-1]) if recorder.rows else {}
    summary: dict[str, Any] = {
        "status": "failed" if failure else "completed",
        "run_dir": str(out_dir), "strategy": cfg.strategy.name, "model": cfg.model.name,
        "data": cfg.data.name,
        "rounds": cfg.federation.num_rounds, "rounds_done": final.get("round", 0),
        "num_clients": len(nodes), "seconds": round(seconds, 2), "discovery_s": discovery_s,
        "final": final, "bytes_total": final.get("bytes_down_total", 0) + final.get("bytes_up_total", 0),
        "rejected_replies": len(recorder.rejected), "failed_rounds": progress.failed_rounds,
        **progress.summary(final),
    }
    if guard is not None:
        summary["privacy"] = guard.summary()
        if last < cfg.federation.num_rounds:
            summary["privacy"]["stopped_after_round"] = last  # the next round would exceed target_epsilon
    if failure:
        summary["failure"] = failure
    elif cfg.export.adapter:
        summary.update(_export(cfg, out_dir, aggregator, evaluator, final, len(nodes), progress,
                               recorder.rows, summary.get("privacy")))
    # Base models this server process loaded: the counted (cached) loads, plus the fresh bases that
    # export.verify and export.merged reload outside that cache. 0 with central_eval=false and no
    # merged export: a SuperLink host without the weights or a GPU can then serve the run.
    reloads = int("export_check" in summary) + int("merged_dir" in summary)
    summary["server_base_model_loads"] = base_model_loads() + reloads
    plot = plot_run(recorder.rows, out_dir / "metrics.png", cfg.model.task)
    if plot:
        summary["plot"] = str(plot)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for line in recorder.table_lines():
        log.info("%s", line)
    log.info("run %s in %.1f s; results in %s", "FAILED" if failure else "finished", seconds, out_dir)
    return summary


def _export(cfg: RunConfig, out_dir: Path, aggregator: Any, evaluator: CentralEvaluator,
            final: dict[str, Any], num_clients: int, progress: RunProgress,
            rows: list[dict[str, Any]], privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the selected global adapter (compressed if export.rank/energy ask) and check it reloads."""
    chosen, selected = aggregator.global_adapter(), {"select": "last", "round": final.get("round")}
    scored = {k[5:]: v for k, v in final.items() if k.startswith("eval_")}
    if cfg.export.select == "best" and progress.best_adapter is not None and progress.best is not None:
        chosen = progress.best_adapter
        selected = {"select": "best", "round": progress.best["round"], "metric": progress.best["metric"]}
        best_row = next((r for r in rows if r["round"] == progress.best["round"]), {})
        scored = {k[5:]: v for k, v in best_row.items() if k.startswith("eval_")}
    adapter, kept = compress_adapter(chosen, cfg.export.rank, cfg.export.energy)
    compressed = cfg.export.rank > 0 or cfg.export.energy > 0
    if compressed and cfg.federation.central_eval:
        # The export is not the server's global update any more: score what is written.
        scored = evaluator.evaluate(adapter)
    provenance = {"num_clients": num_clients, "rounds": cfg.federation.num_rounds, "run_dir": str(out_dir),
                  "final_metrics": scored, "state_checksum": state_checksum(adapter.state),
                  "selected": selected, "privacy": privacy,
                  "export_compression": {"rank": cfg.export.rank, "energy": cfg.export.energy,
                                         "energy_kept_min": kept} if compressed else None}
    adapter_dir = save_adapter(cfg, adapter, evaluator.labels, out_dir / "adapter", provenance)
    out: dict[str, Any] = {"adapter_dir": str(adapter_dir), "exported_round": selected}
    if compressed:
        out["export_energy_kept"] = kept
    if cfg.export.verify and cfg.federation.central_eval and scored:
        out["export_check"] = verify_export(adapter_dir, evaluator, scored, cfg.model)
    if cfg.export.merged:
        out["merged_dir"] = str(save_merged(adapter_dir, out_dir / "merged"))
    return out


def verify_export(adapter_dir: Path, evaluator: CentralEvaluator, server_metrics: dict[str, float],
                  model_cfg: ModelConfig) -> dict[str, Any]:
    """Reload the export into a fresh base and re-evaluate; the metrics must match the server's.

    The reload uses the server's device, dtype and quantization. In float32 on an unquantized base
    only the order of sums may differ (~1e-7 relative); bf16 and 4-bit kernels are noisier.
    """
    model, _, _ = load_exported(adapter_dir, device=model_cfg.device)
    reloaded = evaluator.evaluate_model(model)
    diffs = {k: abs(reloaded[k] - server_metrics[k]) for k in reloaded if k in server_metrics}
    plain_fp32 = model_cfg.quantization == "none" and next(model.parameters()).dtype == torch.float32
    tolerance = 1e-5 if plain_fp32 else 1e-3
    exact = all(d <= tolerance * max(1.0, abs(server_metrics[k])) for k, d in diffs.items())
    (log.info if exact else log.error)(
        "export check: reloaded adapter %s the server's final evaluation (%s; relative tolerance %.0e)",
        "reproduces" if exact else "DOES NOT reproduce",
        ", ".join(f"{k} {reloaded[k]:.6f} vs {server_metrics[k]:.6f}" for k in diffs), tolerance,
    )
    return {"reloaded": reloaded, "server": server_metrics, "matches": exact, "tolerance": tolerance}
