"""PNG plots of a comparison: headline metric vs round and vs cumulative bytes, per scenario.

One line per method (mean over seeds) with the Student-t band over seeds shaded, so overlapping
bands are visible at a glance. The bytes plot answers "what does each point of accuracy cost on
the wire": baselines send nothing, so they appear there as horizontal reference lines at their
final value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedlora.compare.plan import SweepPlan
from fedlora.compare.stats import mean_ci
from fedlora.compare.table import BASELINE_LABELS, RunResult, lower_is_better


def _band(results: Sequence[RunResult], key: str, confidence: float
          ) -> tuple[list[int], list[float], list[float], list[float], list[float]]:
    """Rounds present in every seed; mean, lo, hi of ``key`` and mean cumulative MB per round."""
    per_seed = [dict(r.series(key)) for r in results]
    rounds = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    mean, lo, hi, mb = [], [], [], []
    for rnd in rounds:
        ci = mean_ci([s[rnd] for s in per_seed], confidence)
        mean.append(ci.mean)
        lo.append(ci.lo if ci.n > 1 else ci.mean)
        hi.append(ci.hi if ci.n > 1 else ci.mean)
        totals = []
        for r in results:
            row = next(x for x in r.rows if int(x["round"]) == rnd)
            totals.append((row.get("bytes_down_total", 0) + row.get("bytes_up_total", 0)) / 1e6)
        mb.append(sum(totals) / len(totals))
    return rounds, mean, lo, hi, mb


def plot_scenarios(plan: SweepPlan, results: dict[str, RunResult], out_dir: Path) -> dict[str, list[Path]]:
    """Write ``<scenario>-round.png`` and ``<scenario>-bytes.png`` for each scenario with results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    metric, conf = plan.metrics[0], plan.settings.confidence
    written: dict[str, list[Path]] = {}
    for scenario in dict.fromkeys(r.scenario for r in plan.runs):
        by_method = {m: [results[r.run_id] for r in plan.runs
                         if r.scenario == scenario and r.method == m and r.run_id in results]
                     for m in plan.methods(scenario)}
        by_method = {m: rs for m, rs in by_method.items() if rs}
        if not by_method:
            continue
        fig_r, ax_r = plt.subplots(figsize=(7, 4.2))
        fig_b, ax_b = plt.subplots(figsize=(7, 4.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (method, runs) in enumerate(by_method.items()):
            color = colors[i % len(colors)]
            rounds, mean, lo, hi, mb = _band(runs, metric, conf)
            if not rounds:
                continue
            label = f"{BASELINE_LABELS.get(method, method)} (n={len(runs)})"
            baseline = runs[0].spec.kind != "federated"
            style = "--" if baseline else "-"
            ax_r.plot(rounds, mean, style, marker="o", ms=3, color=color, label=label)
            ax_r.fill_between(rounds, lo, hi, color=color, alpha=0.18, linewidth=0)
            if baseline:
                ax_b.axhline(mean[-1], linestyle="--", color=color, label=f"{label}, final")
            else:
                ax_b.plot(mb, mean, style, marker="o", ms=3, color=color, label=label)
                ax_b.fill_between(mb, lo, hi, color=color, alpha=0.18, linewidth=0)
        pct = round(conf * 100)
        better = "lower" if lower_is_better(metric) else "higher"
        ax_r.xaxis.get_major_locator().set_params(integer=True)
        for ax, xlabel in ((ax_r, "round (baselines: same number of steps)"),
                           (ax_b, "cumulative MB sent (down + up)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{metric} ({better} is better)")
            ax.set_title(f"{scenario}: mean over seeds, {pct}% t-interval shaded", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        paths = [out_dir / f"{scenario}-round.png", out_dir / f"{scenario}-bytes.png"]
        for fig, path in zip((fig_r, fig_b), paths, strict=True):
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
        written[scenario] = paths
    return written
