"""What a run remembers across rounds besides the global adapter: failures, the best round, resume.

Why separate from the round loop: these are the parts that decide whether a run *succeeded* and
what survives a crash. A round whose good replies fall below ``federation.min_train_clients``
failed; after ``federation.max_failed_rounds`` of them the run stops (:class:`RunFailed`), exits
non-zero and is never checkpointed past its last good round, so ``resume=`` redoes the failed
round. The best round by the headline metric (accuracy for classification, loss for causal LMs)
is tracked with a copy of its adapter so that ``export.select=best`` can export it, and both go
into the one atomic checkpoint of :mod:`fedlora.results.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from fedlora.aggregation import Aggregator, GlobalAdapter
from fedlora.config.schema import RunConfig
from fedlora.results import RunRecorder
from fedlora.results.checkpoint import (
    Checkpoint,
    config_changes,
    config_dict,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run stops: too many rounds failed. The message says which and why."""


def headline(task: str) -> tuple[str, bool]:
    """The metric that names a run's best round: ``(row key, higher is better)``."""
    return ("eval_accuracy", True) if task == "classification" else ("eval_loss", False)


class RunProgress:
    """Failed rounds, the best round and the checkpoint of one run directory."""

    def __init__(self, cfg: RunConfig, out_dir: Path):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.failed_rounds: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_adapter: GlobalAdapter | None = None
        self.metric, self.higher = headline(cfg.model.task)
        self._fingerprint = data_fingerprint(cfg)

    # -- failures ---------------------------------------------------------------------------
    def round_failed(self, rnd: int, reason: str, rejected: list[dict[str, Any]]) -> None:
        """Record a failed round; raise :class:`RunFailed` once more than the allowed number failed."""
        reasons = sorted({str(r.get("reason")) for r in rejected})
        self.failed_rounds.append({"round": rnd, "reason": reason, "rejected_reasons": reasons})
        allowed = self.cfg.federation.max_failed_rounds
        detail = f"; replies rejected because: {'; '.join(reasons[:5])}" if reasons else ""
        if len(self.failed_rounds) > allowed:
            raise RunFailed(f"round {rnd} failed: {reason}{detail} ({len(self.failed_rounds)} failed "
                            f"round(s), federation.max_failed_rounds={allowed})")
        log.error("round %d failed: %s%s (global state unchanged; %d of %d allowed failures used)",
                  rnd, reason, detail, len(self.failed_rounds), allowed)

    # -- best round -------------------------------------------------------------------------
    def observe(self, rnd: int, row: dict[str, Any], aggregator: Aggregator) -> None:
        """Keep the round (and a copy of its adapter) if its headline metric is the best so far."""
        value = row.get(self.metric)
        if value is None:
            return
        best = None if self.best is None else self.best["value"]
        better = best is None or (value > best if self.higher else value < best)
        if better:
            adapter = aggregator.global_adapter()
            self.best = {"round": rnd, "metric": self.metric, "value": value, "rank": adapter.rank,
                         "alpha": adapter.alpha, "rank_pattern": adapter.rank_pattern,
                         "alpha_pattern": adapter.alpha_pattern}
            self.best_adapter = GlobalAdapter(
                state={k: v.detach().clone() for k, v in adapter.state.items()}, rank=adapter.rank,
                alpha=adapter.alpha, rank_pattern=dict(adapter.rank_pattern),
                alpha_pattern=dict(adapter.alpha_pattern), use_rslora=adapter.use_rslora,
                use_dora=adapter.use_dora,
            )

    # -- checkpoint and resume -------------------------------------------------------------
    def checkpoint(self, rnd: int, aggregator: Aggregator, recorder: RunRecorder) -> None:
        save_checkpoint(self.out_dir, Checkpoint(
            round=rnd, strategy=aggregator.name, state=aggregator.state_dict(), config=config_dict(self.cfg),
            data_fingerprint=self._fingerprint, rows=recorder.rows, clients=recorder.clients,
            rejected=recorder.rejected, failed_rounds=self.failed_rounds, best=self.best,
            best_state=self.best_adapter.state if self.best_adapter is not None else {},
        ))

    def restore(self, aggregator: Aggregator, recorder: RunRecorder) -> int:
        """Load ``cfg.resume``'s checkpoint into the aggregator, recorder and self; return its round.

        The original ``config.yaml`` is kept; the resume is recorded in ``resumes.jsonl`` beside it.
        """
        ckpt = load_checkpoint(Path(self.cfg.resume))
        if ckpt.strategy != aggregator.name:  # (preflight already refused this; a direct caller may not)
            raise ValueError(
                f"resume: checkpoint is from strategy {ckpt.strategy!r}, config says {aggregator.name!r}"
            )
        aggregator.load_state_dict(ckpt.state)
        this_discovery = [r for r in recorder.rejected if r.get("stage") == "discovery"]  # this attempt's
        recorder.rows, recorder.clients = ckpt.rows, ckpt.clients
        recorder.rejected = ckpt.rejected + this_discovery
        recorder.write()  # drop rows a crash left beyond the checkpoint
        self.failed_rounds, self.best = ckpt.failed_rounds, ckpt.best
        if ckpt.best is not None and ckpt.best_state:
            b = ckpt.best
            self.best_adapter = GlobalAdapter(
                state=ckpt.best_state, rank=int(b["rank"]), alpha=float(b["alpha"]),
                rank_pattern=b.get("rank_pattern") or {}, alpha_pattern=b.get("alpha_pattern") or {},
                use_rslora=self.cfg.lora.use_rslora, use_dora=self.cfg.lora.use_dora,
            )
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "after_round": ckpt.round,
                 "changed": {k: list(v) for k, v in config_changes(ckpt.config, config_dict(self.cfg)).items()
                             if k not in ("resume",)}}
        with open(self.out_dir / "resumes.jsonl", "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
        log.info("resuming %s after round %d of %d",
                 self.cfg.resume, ckpt.round, self.cfg.federation.num_rounds)
        return ckpt.round

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        """The summary's best-round entry, with the final value beside it."""
        if self.best is None:
            return {}
        best = self.best
        return {"best_round": {"round": best["round"], "metric": self.metric, "value": best["value"],
                               "final_value": final.get(self.metric)}}
