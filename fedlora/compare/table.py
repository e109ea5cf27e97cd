"""From each finished run's ``metrics.jsonl`` to one row per (scenario, method): mean and CI over seeds.

Why from the per-round files and not from the summaries: the metric files are what a user can
open and check, and federated runs and baselines write them in one format; the table is a pure
function of them (a test recomputes it independently).

Per run: *final* is the metric of the last round, *best* the best value over rounds 1..R (max for
scores, min for losses and perplexity; round 0, the untrained adapter, is shared by every method
and left out), bytes are the cumulative totals after the last round, *agg gap* the mean over rounds
of ``agg_rel_error`` (the relative gap to the exact update) where the strategy reports it, *wall
time* the seconds of all attempts of the run (``done.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.compare import store
from fedlora.compare.plan import RunSpec, SweepPlan
from fedlora.compare.stats import mean_ci
from fedlora.results import read_jsonl

BASELINE_LABELS = {"centralized": "centralized (upper ref.)", "local": "local-only (client mean)"}


@dataclass(frozen=True)
class RunResult:
    """The per-round rows of one finished run and its wall time."""

    spec: RunSpec
    rows: list[dict[str, Any]]
    wall_s: float

    def series(self, key: str) -> list[tuple[int, float]]:
        """``(round, value)`` for every round that has ``key``."""
        return [(int(r["round"]), float(r[key])) for r in self.rows if _is_number(r.get(key))]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities go down; accuracies and F1 go up."""
    return "loss" in metric or "perplexity" in metric or metric.endswith("error")


def load_results(plan: SweepPlan, out_dir: Path) -> dict[str, RunResult]:
    """Every run of the plan that finished under its current config, by run id."""
    out = {}
    for spec in plan.runs:
        done = store.load_done(out_dir, spec)
        if done is None:
            continue
        rows = read_jsonl(store.run_dir(out_dir, spec) / "metrics.jsonl")
        out[spec.run_id] = RunResult(spec, rows, float(done.get("wall_s", math.nan)))
    return out


def run_values(result: RunResult, metrics: tuple[str, ...]) -> dict[str, float]:
    """The per-run numbers that the table averages over seeds (NaN where a run has none)."""
    values: dict[str, float] = {}
    for metric in metrics:
        series = result.series(metric)
        values[f"{metric}_final"] = series[-1][1] if series else math.nan
        trained = [v for rnd, v in series if rnd >= 1]
        pick = min if lower_is_better(metric) else max
        values[f"{metric}_best"] = pick(trained) if trained else math.nan
    last = result.rows[-1] if result.rows else {}
    values["bytes_down"] = float(last.get("bytes_down_total", 0))
    values["bytes_up"] = float(last.get("bytes_up_total", 0))
    values["bytes_total"] = values["bytes_down"] + values["bytes_up"]
    values["wall_s"] = result.wall_s
    gaps = [v for rnd, v in result.series("agg_rel_error") if rnd >= 1]
    values["agg_rel_error"] = math.fsum(gaps) / len(gaps) if gaps else math.nan
    epsilons = result.series("dp_epsilon")  # privacy=central|local only: the budget spent by the end
    values["dp_epsilon"] = epsilons[-1][1] if epsilons else math.nan
    return values


def summary_rows(plan: SweepPlan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """One row per (scenario, method): for every per-run value its mean, CI half-width, lo, hi."""
    rows = []
    confidence = plan.settings.confidence
    for scenario in dict.fromkeys(r.scenario for r in plan.runs):
        for method in plan.methods(scenario):
            specs = [r for r in plan.runs if r.scenario == scenario and r.method == method]
            done = [results[s.run_id] for s in specs if s.run_id in results]
            row: dict[str, Any] = {"scenario": scenario, "method": method, "kind": specs[0].kind,
                                   "seeds_done": len(done), "seeds_planned": len(specs),
                                   "seeds": " ".join(str(r.spec.seed) for r in done)}
            per_run = [run_values(r, plan.metrics) for r in done]
            keys = list(per_run[0]) if per_run else [f"{m}_{w}" for m in plan.metrics
                                                      for w in ("final", "best")]
            for key in keys:
                ci = mean_ci([v[key] for v in per_run], confidence)
                row.update({f"{key}_mean": ci.mean, f"{key}_ci": ci.half, f"{key}_lo": ci.lo,
                            f"{key}_hi": ci.hi, f"{key}_n": ci.n})
            rows.append(row)
    return rows
