"""Write the comparison's ``results.csv`` and ``results.md`` (and give the console its summary).

The CSV keeps full precision and every statistic (mean, CI half-width, lo, hi, n per value) for
tools; the Markdown shows what a reader compares: final and best headline metric as
``mean ± half-width``, the other metrics' final values, traffic, wall time and the aggregation
gap, one table per scenario; then the paired view (:mod:`fedlora.compare.paired`): each method minus
the reference on the same seeds, which tells methods apart where the per-method intervals overlap
(``results-paired.csv`` has every metric, final and best).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from fedlora.compare import store
from fedlora.compare.paired import PairedView, paired_view, write_paired_csv
from fedlora.compare.plan import SweepPlan
from fedlora.compare.table import BASELINE_LABELS, load_results, lower_is_better, summary_rows

_SHORT = {"eval_accuracy": "accuracy", "eval_macro_f1": "macro-F1", "eval_loss": "loss",
          "eval_perplexity": "perplexity"}


def short(metric: str) -> str:
    """A metric's column title (``eval_accuracy`` -> ``accuracy``)."""
    return _SHORT.get(metric, metric.removeprefix("eval_"))


def _num(value: Any, fmt: str) -> str:
    return "–" if not isinstance(value, int | float) or math.isnan(value) else format(value, fmt)


def _pm(row: dict[str, Any], key: str, fmt: str = ".4f") -> str:
    mean, half = row.get(f"{key}_mean", math.nan), row.get(f"{key}_ci", math.nan)
    if isinstance(mean, float) and math.isnan(mean):
        return "–"
    return _num(mean, fmt) + ("" if math.isnan(half) else f" ± {_num(half, fmt)}")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Full-precision CSV; NaN (no value, or no interval with one seed) as an empty cell."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def markdown(plan: SweepPlan, rows: list[dict[str, Any]], failed: dict[str, str],
             plots: dict[str, list[Path]], paired: PairedView | None = None) -> str:
    """The report as Markdown (with the paired section after the scenario tables when given)."""
    s, head = plan.settings, plan.metrics[0]
    ref = plan.runs[0].cfg
    pct = round(s.confidence * 100)
    lines = [f"# Strategy comparison: {s.name}", "",
             f"{ref.model.name} on {ref.data.name}: {ref.federation.num_clients} clients, "
             f"{ref.federation.num_rounds} rounds, {ref.train.local_steps or ref.train.local_epochs} local "
             f"{'steps' if ref.train.local_steps else 'epochs'} per round, batch {ref.train.batch_size}; "
             f"seeds {list(s.seeds)}. Cells are mean ± half-width of the {pct}% Student-t interval "
             "over seeds.",
             f"Headline metric: {head} ({'lower' if lower_is_better(head) else 'higher'} is better); "
             "*final* is after the last round, *best* the best of rounds 1..R. Bytes are totals sent "
             "down + up over the run.",
             "Baselines: centralized = one adapter on the union of the clients' training data, rounds x "
             "clients-per-round x local steps in total; local-only = each client alone for rounds x local "
             "steps, scored on the central test set, mean over clients.", ""]
    if plan.base_overrides:
        lines += [f"Overrides for every run: `{' '.join(plan.base_overrides)}`", ""]
    others = list(plan.metrics[1:])
    for scenario in s.scenarios:
        sc_rows = [r for r in rows if r["scenario"] == scenario.name]
        if not sc_rows:
            continue
        title = f"## {scenario.name}" + (f": {scenario.description}" if scenario.description else "")
        lines += [title, "", f"Overrides: `{' '.join(scenario.overrides) or '(none)'}`", ""]
        private = any(math.isfinite(r.get("dp_epsilon_mean", math.nan)) for r in sc_rows)
        header = ["method", "seeds", f"final {short(head)}", f"best {short(head)}",
                  *[f"final {short(m)}" for m in others], "MB down", "MB up", "wall s", "agg gap",
                  *(["epsilon"] if private else [])]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sc_rows:
            cells = [BASELINE_LABELS.get(r["method"], r["method"]), f"{r['seeds_done']}/{r['seeds_planned']}",
                     _pm(r, f"{head}_final"), _pm(r, f"{head}_best"), *[_pm(r, f"{m}_final") for m in others],
                     _num(r.get("bytes_down_mean", math.nan) / 1e6, ".3f"),
                     _num(r.get("bytes_up_mean", math.nan) / 1e6, ".3f"),
                     _pm(r, "wall_s", ".1f"), _pm(r, "agg_rel_error", ".2e"),
                     *([_num(r.get("dp_epsilon_mean", math.nan), ".3f")] if private else [])]
            lines.append("| " + " | ".join(cells) + " |")
        images = plots.get(scenario.name, [])
        if images:
            lines += [""] + [f"![{p.stem}]({p.as_posix()})" for p in images]
        lines.append("")
    if paired is not None:
        lines += paired_section(paired, [sc.name for sc in s.scenarios])
    lines += _status_lines(plan, rows, failed)
    return "\n".join(lines).rstrip() + "\n"


def paired_section(view: PairedView, scenarios: list[str]) -> list[str]:
    """The "Paired differences to <reference>" section: the headline metric's final and best value,
    method minus reference, per scenario; a one-line note for a scenario without the reference."""
    head, ref, pct = view.metrics[0], view.reference, round(view.confidence * 100)
    direction = "lower" if lower_is_better(head) else "higher"
    lines = [f"## Paired differences to {ref}", "",
             f"Per seed, each method's {head} minus {ref}'s on the same seed (same partitions, initial "
             f"adapter and client sampling), then mean ± half-width of the {pct}% Student-t interval over "
             f"the seeds both finished (*pairs*). The noise that seeds share cancels, so this can separate "
             f"methods whose intervals above overlap. Verdict ({direction} is better): *better* / *worse* "
             "when the interval excludes 0, *no clear difference* when it contains 0 (no detectable "
             "difference with these seeds, not evidence of equality), *n<2* with fewer than 2 pairs. "
             "Every metric, final and best: `results-paired.csv`.", ""]
    for scenario in scenarios:
        if scenario in view.skipped:
            lines += [f"- `{scenario}`: no paired view; {view.skipped[scenario]}.", ""]
            continue
        sc_rows = view.scenario_rows(scenario)
        if not sc_rows:
            continue
        header = ["method", "pairs", f"Δ final {short(head)}", "verdict", f"Δ best {short(head)}", "verdict"]
        lines += [f"### {scenario}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in dict.fromkeys(r["method"] for r in sc_rows):
            final, best = (view.row(scenario, method, head, w) or {} for w in ("final", "best"))
            cells = [BASELINE_LABELS.get(method, method), str(final.get("n", 0)), _signed(final),
                     final.get("verdict", "n<2"), _signed(best), best.get("verdict", "n<2")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _signed(row: dict[str, Any], fmt: str = ".4f") -> str:
    mean, half = row.get("mean", math.nan), row.get("ci", math.nan)
    if math.isnan(mean):
        return "–"
    return _num(mean, "+" + fmt) + ("" if math.isnan(half) else f" ± {_num(half, fmt)}")


def _status_lines(plan: SweepPlan, rows: list[dict[str, Any]], failed: dict[str, str]) -> list[str]:
    missing = sum(r["seeds_planned"] - r["seeds_done"] for r in rows)
    if not missing:
        return [f"All {len(plan.runs)} runs finished."]
    out = [f"**Incomplete:** {missing} of {len(plan.runs)} runs have no results yet; rerun the same command "
           "to finish them (finished runs are kept)."]
    if failed:
        out += ["", "Failed runs (see `failed.json` in each run directory; rerunning retries them):"]
        out += [f"- `{run_id}`: {err}" for run_id, err in failed.items()]
    return out


def failed_runs(plan: SweepPlan, out_dir: Path) -> dict[str, str]:
    """Runs whose last attempt under the current config failed, with their error."""
    out = {}
    for spec in plan.runs:
        info = store.read_json(store.run_dir(out_dir, spec) / "failed.json")
        if info and info.get("fingerprint") == spec.fingerprint:
            out[spec.run_id] = str(info.get("error", "?"))
    return out


def write_report(plan: SweepPlan, out_dir: Path, with_plots: bool = True) -> dict[str, Any]:
    """Write results.csv, results-paired.csv, results.md and the plots; return paths and the rows."""
    out_dir = Path(out_dir)
    results = load_results(plan, out_dir)
    failed = failed_runs(plan, out_dir)
    rows = summary_rows(plan, results)
    write_csv(rows, out_dir / "results.csv")
    paired = paired_view(plan, results)
    write_paired_csv(paired, out_dir / "results-paired.csv")
    plots: dict[str, list[Path]] = {}
    if with_plots and results:
        from fedlora.compare.plots import plot_scenarios

        plots = plot_scenarios(plan, results, out_dir / "plots")
    rel = {k: [p.relative_to(out_dir) for p in v] for k, v in plots.items()}
    text = markdown(plan, rows, failed, rel, paired)
    (out_dir / "results.md").write_text(text)
    return {"csv": out_dir / "results.csv", "markdown": out_dir / "results.md", "rows": rows, "text": text,
            "paired_csv": out_dir / "results-paired.csv", "paired": paired,
            "plots": [p for v in plots.values() for p in v], "failed": failed}
