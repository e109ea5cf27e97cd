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
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from safetensors.torch import load_file, save_file

from fedlora import protocol as P
from fedlora.aggregation import GlobalAdapter, get_aggregator
from fedlora.config.load import to_yaml
from fedlora.config.schema import ModelConfig, RunConfig
from fedlora.export.adapter import load_exported, save_adapter, save_merged, state_checksum
from fedlora.export.compress import compress_adapter
from fedlora.lora.codec import to_arrayrecord
from fedlora.lora.init import initial_state
from fedlora.results import RunRecorder
from fedlora.results.plots import plot_run
from fedlora.strategies.audit import Auditor
from fedlora.strategies.lora_strategy import LoraStrategy, NodeInfo
from fedlora.training.central import CentralEvaluator

log = logging.getLogger(__name__)


def discover_nodes(
    grid: Grid, cfg: RunConfig, shared: dict[str, Any], wait_s: float = 600.0
) -> dict[int, NodeInfo]:
    """Wait for ``federation.num_clients`` nodes and ask each for its partition and rank."""
    want, deadline = cfg.federation.num_clients, time.monotonic() + wait_s
    while len(list(grid.get_node_ids())) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(list(grid.get_node_ids()))} of federation.num_clients={want} nodes connected"
            )
        time.sleep(0.5)
    messages = [
        Message(RecordDict({P.CONFIG: ConfigRecord(shared)}), dst_node_id=nid, message_type=MessageType.QUERY)
        for nid in grid.get_node_ids()
    ]
    nodes: dict[int, NodeInfo] = {}
    for reply in grid.send_and_receive(messages, timeout=cfg.federation.round_timeout_s):
        if reply.has_error():
            log.error("node %s failed the query round: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        caps = reply.content.config_records[P.CAPS]
        nodes[reply.metadata.src_node_id] = NodeInfo(
            node_id=reply.metadata.src_node_id, partition_id=int(caps[P.PARTITION_ID]),
            rank=int(caps[P.RANK]),
            device=str(caps[P.DEVICE]), num_train_examples=int(caps[P.NUM_TRAIN_EXAMPLES]),
        )
    pids = sorted(n.partition_id for n in nodes.values())
    if len(set(pids)) != len(pids):
        raise ValueError(f"two nodes claim the same partition id: {pids}")
    log.info("discovered %d nodes: %s", len(nodes),
             ", ".join(f"p{n.partition_id}(r={n.rank},{n.device},n={n.num_train_examples})"
                       for n in sorted(nodes.values(), key=lambda n: n.partition_id)))
    return nodes


def run_server(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run the whole federation and return the run summary (also written to summary.json)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    evaluator = CentralEvaluator(cfg)
    recorder = RunRecorder(out_dir, cfg.model.task)
    shared = {P.CFG_YAML: to_yaml(cfg).encode(), P.WIRE_DTYPE: cfg.federation.wire_dtype}
    if evaluator.labels:
        shared[P.LABELS] = evaluator.labels
    nodes = discover_nodes(grid, cfg, shared)

    aggregator = get_aggregator(cfg.strategy.name)(
        alpha=cfg.lora.alpha, norm_weighted=cfg.strategy.norm_weighted,
        rank_cap=cfg.strategy.rank_cap, energy=cfg.strategy.energy, init_seed=cfg.lora.init_seed,
    )
    global_rank = max(n.rank for n in nodes.values())
    shapes = evaluator.adapter_shapes(global_rank)
    aggregator.init_state(
        GlobalAdapter(initial_state(shapes, cfg.lora.init_seed), global_rank, cfg.lora.alpha)
    )
    done = _resume(cfg, aggregator, recorder) if cfg.resume else 0

    strategy = LoraStrategy(cfg=cfg, aggregator=aggregator, nodes=nodes, recorder=recorder,
                            shared_config=shared, round_offset=done, global_rank=global_rank,
                            auditor=Auditor(out_dir) if cfg.export.audit else None)

    def end_of_round(server_round: int, _arrays: Any) -> MetricRecord | None:
        rnd = server_round + done
        if server_round == 0 and done > 0:
            return None  # round `done` was evaluated before the crash
        metrics = evaluator.evaluate(aggregator.global_adapter()) if cfg.federation.central_eval else None
        recorder.end_round(rnd, metrics)
        every = cfg.export.checkpoint_every
        if every and (rnd % every == 0 or rnd == cfg.federation.num_rounds):
            _checkpoint(out_dir, rnd, aggregator)
        return MetricRecord(metrics) if metrics else None

    remaining = cfg.federation.num_rounds - done
    if remaining > 0:
        strategy.start(grid=grid, initial_arrays=to_arrayrecord(aggregator.global_adapter().state),
                       num_rounds=remaining, timeout=cfg.federation.round_timeout_s, evaluate_fn=end_of_round)
    return _finish(cfg, out_dir, aggregator, evaluator, recorder, nodes, time.perf_counter() - t0)


def _checkpoint(out_dir: Path, rnd: int, aggregator: Any) -> None:
    ckpt = out_dir / "checkpoint"
    ckpt.mkdir(exist_ok=True)
    tmp = ckpt / "global.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in aggregator.state_dict().items()}, str(tmp))
    tmp.replace(ckpt / "global.safetensors")
    (ckpt / "state.json").write_text(json.dumps({"round": rnd, "strategy": aggregator.name}))


def _resume(cfg: RunConfig, aggregator: Any, recorder: RunRecorder) -> int:
    ckpt = Path(cfg.resume) / "checkpoint"
    meta = json.loads((ckpt / "state.json").read_text())
    if meta["strategy"] != aggregator.name:
        raise ValueError(
            f"resume: checkpoint is from strategy {meta['strategy']!r}, config says {aggregator.name!r}"
        )
    aggregator.load_state_dict(load_file(str(ckpt / "global.safetensors")))
    recorder.load(meta["round"])
    log.info("resuming %s after round %d of %d", cfg.resume, meta["round"], cfg.federation.num_rounds)
    return int(meta["round"])


def _finish(cfg: RunConfig, out_dir: Path, aggregator: Any, evaluator: CentralEvaluator,
            recorder: RunRecorder, nodes: dict[int, NodeInfo], seconds: float) -> dict[str, Any]:
    final = dict(recorder.rows[-1]) if recorder.rows else {}
    summary: dict[str, Any] = {
        "run_dir": str(out_dir), "strategy": cfg.strategy.name, "model": cfg.model.name,
        "data": cfg.data.name,
        "rounds": cfg.federation.num_rounds, "num_clients": len(nodes), "seconds": round(seconds, 2),
        "final": final, "bytes_total": final.get("bytes_down_total", 0) + final.get("bytes_up_total", 0),
        "rejected_replies": len(recorder.rejected),
    }
    if cfg.export.adapter:
        summary.update(_export(cfg, out_dir, aggregator, evaluator, final, len(nodes)))
    plot = plot_run(recorder.rows, out_dir / "metrics.png", cfg.model.task)
    if plot:
        summary["plot"] = str(plot)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for line in recorder.table_lines():
        log.info("%s", line)
    log.info("run finished in %.1f s; results in %s", seconds, out_dir)
    return summary


def _export(cfg: RunConfig, out_dir: Path, aggregator: Any, evaluator: CentralEvaluator,
            final: dict[str, Any], num_clients: int) -> dict[str, Any]:
    """Write the global adapter (compressed if export.rank/energy ask for it) and check it reloads."""
    adapter, kept = compress_adapter(aggregator.global_adapter(), cfg.export.rank, cfg.export.energy)
    final_metrics = {k[5:]: v for k, v in final.items() if k.startswith("eval_")}
    compressed = cfg.export.rank > 0 or cfg.export.energy > 0
    if compressed and cfg.federation.central_eval:
        # The export is not the server's global update any more: score what is written.
        final_metrics = evaluator.evaluate(adapter)
    provenance = {"num_clients": num_clients, "rounds": cfg.federation.num_rounds, "run_dir": str(out_dir),
                  "final_metrics": final_metrics, "state_checksum": state_checksum(adapter.state),
                  "export_compression": {"rank": cfg.export.rank, "energy": cfg.export.energy,
                                         "energy_kept_min": kept} if compressed else None}
    adapter_dir = save_adapter(cfg, adapter, evaluator.labels, out_dir / "adapter", provenance)
    out: dict[str, Any] = {"adapter_dir": str(adapter_dir)}
    if compressed:
        out["export_energy_kept"] = kept
    if cfg.export.verify and cfg.federation.central_eval:
        out["export_check"] = verify_export(adapter_dir, evaluator, final_metrics, cfg.model)
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
