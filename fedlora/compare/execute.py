"""Run the missing runs of a sweep one after another, with progress, ETA and per-run logs.

Runs execute in this process (``simulations.engine.simulate`` for federated runs, the functions of
:mod:`fedlora.training.baselines` for the baselines), handed in as ``runners`` so that this
package stays free of Flower and tests can substitute fakes. In-process rather than a subprocess
per run: Flower's simulation shuts its Ray runtime down after each run (the integration tests run
several simulations in one process), the tokenizer/model/data caches of the server side are
reused across runs, and an error surfaces as a Python exception with its traceback instead of an
exit code. Ctrl-C stops the sweep after marking the current run interrupted; rerunning resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora.compare import store
from fedlora.compare.plan import RunSpec, SweepPlan
from fedlora.config.schema import RunConfig

Runner = Callable[[RunConfig, Path], dict[str, Any]]


@dataclass
class SweepOutcome:
    """What an invocation did; ``complete`` when every run of the plan is done."""

    total: int
    done_before: int = 0
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    left: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.left == 0 and not self.failed and not self.interrupted


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def estimate(remaining: list[RunSpec], durations: Mapping[str, list[float]]) -> float | None:
    """Seconds left: each remaining run costs the mean time of finished runs of its kind
    (federated runs and baselines differ by a lot), else the mean over all kinds."""
    every = [d for ds in durations.values() for d in ds]
    if not remaining:
        return 0.0
    if not every:
        return None
    fallback = sum(every) / len(every)
    return sum((sum(durations[r.kind]) / len(durations[r.kind])) if durations.get(r.kind) else fallback
               for r in remaining)


class _RunLogging:
    """Send log records to ``<run dir>/run.log``; keep the console to progress lines unless verbose."""

    def __init__(self, path: Path, verbose: bool):
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.verbose = verbose
        self.saved: list[tuple[logging.Handler, int]] = []
        self.root_level = logging.NOTSET

    def __enter__(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        self.root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        if not self.verbose:
            # Flower logs through its own console handler ("flwr" does not propagate).
            handlers = [*root.handlers, *logging.getLogger("flwr").handlers]
            console = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
            for h in handlers:
                if getattr(h, "stream", None) in console and not isinstance(h, logging.FileHandler):
                    self.saved.append((h, h.level))
                    h.setLevel(max(h.level, logging.WARNING))

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.root_level)
        self.handler.close()
        for h, level in self.saved:
            h.setLevel(level)


def run_sweep(plan: SweepPlan, out_dir: Path, runners: Mapping[str, Runner],
              say: Callable[[str], None] = print) -> SweepOutcome:
    """Run every run of ``plan`` that is not done (under its current config) in ``out_dir``."""
    settings, out_dir, t0 = plan.settings, Path(out_dir), time.perf_counter()
    states = {r.run_id: store.status(out_dir, r) for r in plan.runs}
    todo = [r for r in plan.runs if states[r.run_id] != store.DONE]
    outcome = SweepOutcome(total=len(plan.runs), done_before=len(plan.runs) - len(todo), left=len(todo))
    durations: dict[str, list[float]] = {}
    for r in plan.runs:
        done = store.load_done(out_dir, r) if states[r.run_id] == store.DONE else None
        if done:
            durations.setdefault(r.kind, []).append(float(done.get("wall_s", 0.0)))
    counts = {s: sum(v == s for v in states.values()) for s in set(states.values())}
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != store.DONE)
    say(f"[compare] {plan.settings.name}: {len(plan.runs)} runs in {out_dir}: {outcome.done_before} done, "
        f"{len(todo)} to run" + (f" ({detail})" if todo else ""))
    metric = plan.metrics[0]
    for i, spec in enumerate(todo):
        if settings.max_runs and len(outcome.ran) + len(outcome.failed) >= settings.max_runs:
            say(f"[compare] compare.max_runs={settings.max_runs} reached; "
                f"{outcome.left} run(s) left for the next call")
            break
        done_now = outcome.done_before + len(outcome.ran)
        say(f"[compare {done_now + 1}/{outcome.total}] {spec.run_id} ({spec.kind}"
            f"{', resuming' if states[spec.run_id] == store.RESUMABLE else ''}): {done_now} done, "
            f"{outcome.left} left, ETA {fmt_duration(estimate(todo[i:], durations))}")
        d, resume = store.begin(out_dir, spec)
        cfg = dataclasses.replace(spec.cfg, output_dir=str(d), resume=str(d) if resume else "")
        start = time.perf_counter()
        try:
            with _RunLogging(d / "run.log", settings.verbose):
                summary = runners[spec.kind](cfg, d)
        except KeyboardInterrupt:
            store.end_attempt(d, time.perf_counter() - start, "interrupted")
            outcome.interrupted = True
            say(f"[compare] interrupted during {spec.run_id}; rerun the same command to continue")
            break
        except Exception as err:
            store.fail(d, spec, err, traceback.format_exc(), time.perf_counter() - start)
            outcome.failed[spec.run_id] = f"{type(err).__name__}: {err}"
            outcome.left -= 1
            say(f"[compare] FAILED {spec.run_id}: {type(err).__name__}: {err} (details: {d / 'failed.json'})")
            if settings.fail_fast:
                say("[compare] compare.fail_fast=true: stopping")
                break
            continue
        done = store.finish(d, spec, summary, time.perf_counter() - start)
        durations.setdefault(spec.kind, []).append(done["wall_s"])
        outcome.ran.append(spec.run_id)
        outcome.left -= 1
        value = summary.get("final", {}).get(metric)
        shown = f"{metric} {value:.4f}" if isinstance(value, int | float) else "no metric"
        say(f"[compare] done {spec.run_id} in {fmt_duration(done['wall_s'])}: final {shown}")
    outcome.seconds = time.perf_counter() - t0
    return outcome
