"""Paired differences to a reference method (``compare.reference``, FedIT by default), seed by seed.

Why pair: with 3 seeds the per-method intervals of the main table are wide (t = 4.30) and usually
overlap, yet much of that spread is *shared*: comparison seed ``k`` gives every method of a
scenario the same initial adapter, the same client sampling and shuffles (and every seed the
same partitions). The per-seed difference ``method - reference`` cancels that shared part, so
its interval reflects only how the methods differ, and is often much narrower than either
method's own interval. E.g. accuracies 0.60/0.62/0.61 vs 0.64/0.65/0.66 overlap as intervals
(0.61 ± 0.025 vs 0.65 ± 0.025) but differ by 0.04/0.03/0.05 seed by seed: 0.04 ± 0.025, clearly > 0.

A pair is only formed on a seed where both runs finished (and both report the value), so an
unfinished or failed run drops its seed from that comparison instead of biasing it. The
per-run values are exactly the main table's (:func:`fedlora.compare.table.run_values`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora.compare.plan import RunSpec, SweepPlan
from fedlora.compare.stats import Interval, mean_ci
from fedlora.compare.table import RunResult, lower_is_better, run_values

BETTER, WORSE, UNCLEAR, TOO_FEW = "better", "worse", "no clear difference", "n<2"
WHICH = ("final", "best")
COLUMNS = ("scenario", "method", "kind", "reference", "metric", "which", "lower_is_better", "n", "seeds",
           "mean", "ci", "lo", "hi", "sd", "verdict")


@dataclass(frozen=True)
class PairedView:
    """The paired comparison of a sweep.

    ``rows``: one per (scenario, method, metric, final/best) with the columns of :data:`COLUMNS`;
    ``skipped``: scenario -> why it has no rows (no reference run in it, or nothing to pair with),
    so the report can say so instead of silently leaving the scenario out.
    """

    reference: str
    confidence: float
    metrics: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def scenario_rows(self, scenario: str) -> list[dict[str, Any]]:
        """The rows of one scenario, in table order."""
        return [r for r in self.rows if r["scenario"] == scenario]

    def row(self, scenario: str, method: str, metric: str, which: str) -> dict[str, Any] | None:
        """One row, or ``None`` if there is none (e.g. the reference itself)."""
        return next((r for r in self.rows if (r["scenario"], r["method"], r["metric"], r["which"])
                     == (scenario, method, metric, which)), None)


def verdict(ci: Interval, lower_better: bool) -> str:
    """``better``/``worse`` when the interval of ``method - reference`` excludes 0, else unclear.

    For a loss or perplexity a negative difference is the improvement. With fewer than 2 pairs
    there is no interval, hence no verdict (``n<2``) rather than a guess from one seed.
    """
    if ci.n < 2 or math.isnan(ci.lo) or math.isnan(ci.hi):
        return TOO_FEW
    if ci.lo > 0:
        return WORSE if lower_better else BETTER
    if ci.hi < 0:
        return BETTER if lower_better else WORSE
    return UNCLEAR


def paired_differences(values: dict[int, dict[str, float]], ref_values: dict[int, dict[str, float]],
                       key: str) -> tuple[list[int], list[float]]:
    """Seeds and ``method - reference`` differences of ``key`` over the seeds both have a number for.

    ``values``/``ref_values`` map seed -> :func:`run_values` of the finished runs only.
    """
    seeds: list[int] = []
    diffs: list[float] = []
    for seed in sorted(set(values) & set(ref_values)):
        a, b = values[seed].get(key, math.nan), ref_values[seed].get(key, math.nan)
        if math.isfinite(a) and math.isfinite(b):
            seeds.append(seed)
            diffs.append(a - b)
    return seeds, diffs


def _finished(specs: Sequence[RunSpec], results: dict[str, RunResult],
              metrics: tuple[str, ...]) -> dict[int, dict[str, float]]:
    return {s.seed: run_values(results[s.run_id], metrics) for s in specs if s.run_id in results}


def paired_view(plan: SweepPlan, results: dict[str, RunResult], reference: str | None = None) -> PairedView:
    """Per scenario with the reference: each other method's paired differences, one row per value.

    ``reference`` defaults to ``compare.reference``. Every method of the scenario is compared,
    baselines included (e.g. how far the reference is from centralized training, seed by seed).
    """
    reference = reference or plan.settings.reference
    confidence = plan.settings.confidence
    view = PairedView(reference, confidence, tuple(plan.metrics))
    for scenario in dict.fromkeys(r.scenario for r in plan.runs):
        methods = plan.methods(scenario)
        if reference not in methods:
            view.skipped[scenario] = (f"{reference} is not run in this scenario (not among its methods), "
                                      "so there is nothing to pair with")
            continue
        if len(methods) == 1:
            view.skipped[scenario] = f"{reference} is the only method of this scenario"
            continue
        runs = [r for r in plan.runs if r.scenario == scenario]
        ref_values = _finished([r for r in runs if r.method == reference], results, plan.metrics)
        for method in methods:
            if method == reference:
                continue
            specs = [r for r in runs if r.method == method]
            values = _finished(specs, results, plan.metrics)
            for metric in plan.metrics:
                lower = lower_is_better(metric)
                for which in WHICH:
                    seeds, diffs = paired_differences(values, ref_values, f"{metric}_{which}")
                    ci = mean_ci(diffs, confidence)
                    view.rows.append({
                        "scenario": scenario, "method": method, "kind": specs[0].kind,
                        "reference": reference, "metric": metric, "which": which, "lower_is_better": lower,
                        "n": ci.n, "seeds": " ".join(map(str, seeds)), "mean": ci.mean, "ci": ci.half,
                        "lo": ci.lo, "hi": ci.hi, "sd": ci.sd, "verdict": verdict(ci, lower)})
    return view


def write_paired_csv(view: PairedView, path: Path) -> None:
    """Full-precision CSV of every paired row (fixed columns, so it is well-formed even when empty);
    NaN (no interval with fewer than 2 pairs) as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in view.rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
