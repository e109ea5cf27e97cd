"""The paired view (method minus reference, seed by seed): hand-computed numbers, verdicts, exclusions.

The unit tests build a plan and its results by hand (no Hydra, no files): every expected mean and
interval below is worked out from the table of values with printed t quantiles, not with
fedlora.compare.stats. The last test runs a small fake sweep end to end to check the report.
"""

import csv
import json
import math
from pathlib import Path

import pytest

from fedlora.compare import run_comparison
from fedlora.compare.paired import paired_view, verdict
from fedlora.compare.plan import RunSpec, SweepPlan
from fedlora.compare.report import paired_section
from fedlora.compare.settings import CompareSettings, Scenario, compose_settings
from fedlora.compare.stats import Interval
from fedlora.compare.table import RunResult
from fedlora.config import ConfigError

T975_DF1, T975_DF2 = 12.7062, 4.3027  # printed Student-t table, two-sided 95%

# (accuracy round 1, accuracy round 2, loss round 1, loss round 2) per method and seed; round 0 is
# shared (0.30 / 1.20). A missing seed is a run that did not finish.
VALUES = {
    "fedit": {0: (0.58, 0.60, 0.95, 0.90), 1: (0.63, 0.62, 0.85, 0.80), 2: (0.55, 0.61, 0.88, 0.85)},
    "ffa": {0: (0.50, 0.64, 0.95, 0.95), 1: (0.50, 0.65, 0.86, 0.86), 2: (0.67, 0.66, 0.89, 0.89)},
    "flora": {0: (0.60, 0.62, 0.85, 0.70), 2: (0.60, 0.64, 0.80, 0.66)},
    "centralized": {1: (0.70, 0.72, 0.60, 0.55)},
    "local": {0: (0.40, 0.41, 1.00, 0.99), 1: (0.40, 0.42, 1.00, 0.98), 2: (0.40, 0.43, 1.00, 0.97)},
}
SCENARIOS = {  # scenario -> {method: seeds that finished}
    "homogeneous": {"fedit": (0, 1, 2), "ffa": (0, 1, 2), "flora": (0, 2), "centralized": (1,)},
    "heterogeneous": {"ffa": (0, 1, 2), "local": (0, 1, 2)},  # no fedit (mixed ranks)
    "iid": {"fedit": (0, 1), "ffa": (0, 1, 2)},  # the reference misses seed 2
}
METRICS = ("eval_accuracy", "eval_loss")


def _rows(method: str, seed: int) -> list[dict]:
    a1, a2, l1, l2 = VALUES[method][seed]
    return [{"round": 0, "eval_accuracy": 0.30, "eval_loss": 1.20},
            {"round": 1, "eval_accuracy": a1, "eval_loss": l1},
            {"round": 2, "eval_accuracy": a2, "eval_loss": l2}]


def _fake() -> tuple[SweepPlan, dict[str, RunResult]]:
    settings = CompareSettings(name="fake", out_dir="/unused", seeds=(0, 1, 2), default_strategies=(),
                               scenarios=tuple(Scenario(n, ()) for n in SCENARIOS))
    runs, results = [], {}
    for seed in settings.seeds:
        for scenario, methods in SCENARIOS.items():
            for method, finished in methods.items():
                kind = method if method in ("centralized", "local") else "federated"
                spec = RunSpec(f"{scenario}/{method}/seed{seed}", scenario, method, kind, seed, (), None, "")
                runs.append(spec)
                if seed in finished:
                    results[spec.run_id] = RunResult(spec, _rows(method, seed), 1.0)
    return SweepPlan(settings, (), tuple(runs), METRICS, "classification"), results


def _by_hand(diffs: list[float], t: float) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, t * sd / math.sqrt(n)


def _check(row: dict, diffs: list[float], t: float, seeds: str, expected_verdict: str) -> None:
    mean, half = _by_hand(diffs, t)
    assert row["n"] == len(diffs) and row["seeds"] == seeds
    assert row["mean"] == pytest.approx(mean, abs=1e-12)
    assert row["ci"] == pytest.approx(half, rel=1e-4)  # the literal t is rounded to 5 digits
    assert row["lo"] == pytest.approx(mean - half, rel=1e-4)
    assert row["hi"] == pytest.approx(mean + half, rel=1e-4)
    assert row["verdict"] == expected_verdict


def test_hand_computed_paired_differences_and_intervals():
    plan, results = _fake()
    view = paired_view(plan, results)
    assert view.reference == "fedit" and plan.settings.reference == "fedit"
    ffa = {(m, w): view.row("homogeneous", "ffa", m, w) for m in METRICS for w in ("final", "best")}
    # final accuracy: 0.64-0.60, 0.65-0.62, 0.66-0.61 -> mean 0.04, sd 0.01, half 4.3027*0.01/sqrt(3)
    _check(ffa["eval_accuracy", "final"], [0.04, 0.03, 0.05], T975_DF2, "0 1 2", "better")
    assert ffa["eval_accuracy", "final"]["ci"] == pytest.approx(0.024842, abs=1e-6)
    # ... although the two methods' own intervals overlap (0.61 ± 0.0248 and 0.65 ± 0.0248):
    assert 0.61 + 0.024842 > 0.65 - 0.024842
    # best accuracy over rounds 1..2: fedit 0.60, 0.63, 0.61; ffa 0.64, 0.65, 0.67 -> sd 0.02
    _check(ffa["eval_accuracy", "best"], [0.04, 0.02, 0.06], T975_DF2, "0 1 2", "no clear difference")
    # final loss: 0.95-0.90, 0.86-0.80, 0.89-0.85: higher loss, interval above 0 -> worse
    _check(ffa["eval_loss", "final"], [0.05, 0.06, 0.04], T975_DF2, "0 1 2", "worse")
    _check(ffa["eval_loss", "best"], [0.05, 0.06, 0.04], T975_DF2, "0 1 2", "worse")
    assert ffa["eval_loss", "final"]["lower_is_better"]
    assert not ffa["eval_accuracy", "final"]["lower_is_better"]
    assert view.row("homogeneous", "fedit", "eval_accuracy", "final") is None  # not paired with itself


def test_verdicts_respect_the_direction_of_the_metric():
    plan, results = _fake()
    view = paired_view(plan, results)
    # flora, seeds 0 and 2 only: loss 0.70-0.90 and 0.66-0.85 -> lower loss, interval below 0 -> better
    _check(view.row("homogeneous", "flora", "eval_loss", "final"), [-0.20, -0.19], T975_DF1, "0 2", "better")
    _check(view.row("homogeneous", "flora", "eval_accuracy", "final"), [0.02, 0.03], T975_DF1, "0 2",
           "no clear difference")
    nan = math.nan
    assert verdict(Interval(0.1, 0.05, 0.05, 0.15, 3, 0.01), lower_better=False) == "better"
    assert verdict(Interval(0.1, 0.05, 0.05, 0.15, 3, 0.01), lower_better=True) == "worse"
    assert verdict(Interval(-0.1, 0.05, -0.15, -0.05, 3, 0.01), lower_better=False) == "worse"
    assert verdict(Interval(-0.1, 0.05, -0.15, -0.05, 3, 0.01), lower_better=True) == "better"
    assert verdict(Interval(0.01, 0.05, -0.04, 0.06, 3, 0.01), lower_better=False) == "no clear difference"
    assert verdict(Interval(0.0, 0.0, 0.0, 0.0, 3, 0.0), lower_better=False) == "no clear difference"
    assert verdict(Interval(0.1, nan, nan, nan, 1, nan), lower_better=False) == "n<2"
    assert verdict(Interval(nan, nan, nan, nan, 0, nan), lower_better=True) == "n<2"


def test_seeds_where_only_one_of_the_pair_finished_are_excluded():
    plan, results = _fake()
    view = paired_view(plan, results)
    # iid: fedit finished seeds 0, 1; ffa 0, 1, 2 -> seed 2 is left out
    _check(view.row("iid", "ffa", "eval_accuracy", "final"), [0.04, 0.03], T975_DF1, "0 1",
           "no clear difference")
    # centralized finished seed 1 only: one pair, a mean but no interval and no verdict
    central = view.row("homogeneous", "centralized", "eval_accuracy", "final")
    assert central["n"] == 1 and central["seeds"] == "1" and central["mean"] == pytest.approx(0.72 - 0.62)
    assert math.isnan(central["ci"]) and central["verdict"] == "n<2"
    assert central["kind"] == "centralized"


def test_scenario_without_the_reference_is_named_in_the_report():
    plan, results = _fake()
    view = paired_view(plan, results)
    assert {r["scenario"] for r in view.rows} == {"homogeneous", "iid"}
    assert list(view.skipped) == ["heterogeneous"]
    lines = paired_section(view, list(SCENARIOS))
    text = "\n".join(lines)
    print(text)  # the rendered example (pytest -s)
    assert lines[0] == "## Paired differences to fedit"
    assert "| ffa | 3 | +0.0400 ± 0.0248 | better | +0.0400 ± 0.0497 | no clear difference |" in lines
    unclear = "+0.0250 ± 0.0635 | no clear difference"
    assert f"| flora | 2 | {unclear} | {unclear} |" in lines
    assert "| centralized (upper ref.) | 1 | +0.1000 | n<2 | +0.0900 | n<2 |" in lines
    assert any(line.startswith("- `heterogeneous`: no paired view; fedit is not run") for line in lines)
    assert text.index("### homogeneous") < text.index("`heterogeneous`") < text.index("### iid")
    assert "so there is nothing to pair with.\n\n### iid" in text  # Markdown needs the blank line
    other = paired_view(plan, results, reference="ffa")
    assert other.skipped == {} and other.row("heterogeneous", "local", "eval_loss", "final")["n"] == 3


def test_reference_setting():
    settings, _ = compose_settings(["compare.out_dir=/tmp/unused"])
    assert settings.reference == "fedit"
    settings, _ = compose_settings(["compare.out_dir=/tmp/unused", "compare.reference=centralized"])
    assert settings.reference == "centralized"
    with pytest.raises(ConfigError, match=r"compare\.reference"):
        compose_settings(["compare.out_dir=/tmp/unused", "compare.reference=''"])


def _fake_runner(kind: str):
    def run(cfg, out_dir: Path):
        method = cfg.strategy.name if kind == "federated" else kind
        gain = {"fedit": 0.00, "ffa": 0.04, "local": -0.10}[method]
        rows = [{"round": r, "eval_accuracy": 0.5 + 0.01 * r + 0.02 * cfg.train.seed + gain * (r > 0),
                 "eval_loss": 1.0 - 0.01 * r} for r in range(cfg.federation.num_rounds + 1)]
        (Path(out_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"final": rows[-1]}
    return run


def test_report_has_the_paired_section_and_csv(tmp_path):
    settings, runs = compose_settings([
        "preset=smoke", f"compare.out_dir={tmp_path}", "compare.name=paired", "compare.seeds=[0,1]",
        "compare.scenarios=[natural,heterogeneous]", "compare.default_strategies=[fedit,ffa]",
        "compare.catalog.heterogeneous.strategies=[ffa]", "compare.baselines=[local]",
        "federation.num_rounds=2"])
    runners = {k: _fake_runner(k) for k in ("federated", "centralized", "local")}
    plan, outcome, report = run_comparison(settings, runs, runners, say=lambda _: None)
    assert outcome.complete and len(plan.runs) == 10
    text = (tmp_path / "results.md").read_text()
    assert text == report["text"]
    at = text.index("## Paired differences to fedit")
    assert text.index("## heterogeneous") < at < text.index("All 10 runs finished.")
    assert "| ffa | 2 | +0.0400 ± 0.0000 | better |" in text  # the same +0.04 on both seeds
    assert "| local-only (client mean) | 2 | -0.1000 ± 0.0000 | worse |" in text
    assert "- `heterogeneous`: no paired view; fedit is not run in this scenario" in text
    with open(report["paired_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert report["paired_csv"].name == "results-paired.csv"
    assert len(rows) == 2 * len(plan.metrics) * 2  # (ffa, local) x metrics x (final, best), natural only
    ffa = next(r for r in rows if (r["method"], r["metric"], r["which"]) == ("ffa", "eval_accuracy", "final"))
    assert float(ffa["mean"]) == pytest.approx(0.04) and ffa["seeds"] == "0 1" and ffa["verdict"] == "better"
    f1 = next(r for r in rows if r["metric"] == "eval_macro_f1")  # the fake runs do not report it
    assert f1["n"] == "0" and f1["mean"] == "" and f1["verdict"] == "n<2"
    with open(tmp_path / "results.csv") as f:
        assert "verdict" not in next(csv.reader(f))
