"""Compare aggregation strategies: plan a sweep, run what is missing, report mean and CI over seeds.

``python -m simulations.compare`` is the entry point; this package holds the parts it drives:
:mod:`~fedlora.compare.settings` (the ``compare`` config section), :mod:`~fedlora.compare.plan`
(scenarios x seeds x methods, every run composed and validated up front),
:mod:`~fedlora.compare.store` (done/resume markers per run directory),
:mod:`~fedlora.compare.execute` (the loop, progress and ETA), :mod:`~fedlora.compare.stats`
(Student-t intervals), :mod:`~fedlora.compare.table`, :mod:`~fedlora.compare.paired` (differences
to a reference method, seed by seed), :mod:`~fedlora.compare.report` and
:mod:`~fedlora.compare.plots`. Flower is not imported here: the runners are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlora.compare.execute import Runner, SweepOutcome, run_sweep
from fedlora.compare.plan import RunSpec, SweepPlan, plan_sweep
from fedlora.compare.report import write_report
from fedlora.compare.settings import CompareSettings, parse_settings
from fedlora.compare.stats import mean_ci, t_quantile

__all__ = [
    "CompareSettings",
    "RunSpec",
    "Runner",
    "SweepOutcome",
    "SweepPlan",
    "mean_ci",
    "parse_settings",
    "plan_sweep",
    "run_comparison",
    "run_sweep",
    "t_quantile",
    "write_plan",
    "write_report",
]


def write_plan(plan: SweepPlan, out_dir: Path) -> Path:
    """Record the plan (every run, its overrides, fingerprint and standalone command) as plan.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan.json"
    runs = [{"run_id": r.run_id, "scenario": r.scenario, "method": r.method, "kind": r.kind, "seed": r.seed,
             "fingerprint": r.fingerprint, "overrides": list(r.overrides),
             "command": r.command if r.kind == "federated" else None} for r in plan.runs]
    path.write_text(json.dumps({"name": plan.settings.name, "base_overrides": list(plan.base_overrides),
                                "metrics": list(plan.metrics), "seeds": list(plan.settings.seeds),
                                "runs": runs}, indent=2))
    return path


def run_comparison(settings: CompareSettings, base_overrides: Sequence[str], runners: Mapping[str, Runner],
                   say: Callable[[str], None] = print) -> tuple[SweepPlan, SweepOutcome, dict[str, Any]]:
    """Plan (validating every run first), run what is missing, write the report.

    The report is written even when the sweep stops early (Ctrl-C, ``compare.max_runs``, a
    failure), from the runs finished so far, and says what is missing.
    """
    plan = plan_sweep(settings, base_overrides)
    out_dir = Path(settings.out_dir)
    write_plan(plan, out_dir)
    outcome = run_sweep(plan, out_dir, runners, say)
    report = write_report(plan, out_dir)
    return plan, outcome, report
