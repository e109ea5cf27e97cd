"""The sweep loop with fake runners: resume after an interruption, failures, staleness, the report.

Fake runners write ``metrics.jsonl`` like real runs (in milliseconds), so these tests pin down
the bookkeeping; tests/compare/test_compare_integration.py does the same with real tiny runs.
"""

import json
import math
from pathlib import Path

import pytest

from fedlora.compare import run_comparison
from fedlora.compare.settings import compose_settings
from tests.compare.helpers import check_table

ROUNDS = 3


def _value(cfg, kind, rnd):
    base = {"federated": 0.50, "centralized": 0.60, "local": 0.40}[kind]
    bump = 0.02 if rnd == 2 and cfg.train.seed == 1 else 0.0  # best != final for one seed
    return base + 0.03 * rnd + 0.011 * cfg.train.seed ** 2 + bump


class Fake:
    """Runners that record their calls; optionally interrupt or fail on the n-th call."""

    def __init__(self, interrupt_at=None, fail_at=None, checkpoint=False):
        self.calls = []
        self.interrupt_at, self.fail_at, self.checkpoint = interrupt_at, fail_at, checkpoint

    def runner(self, kind):
        def run(cfg, out_dir: Path):
            self.calls.append((str(out_dir), cfg.resume))
            out_dir = Path(out_dir)
            rows = [{"round": r, "eval_accuracy": _value(cfg, kind, r),
                     "eval_loss": 1.0 - _value(cfg, kind, r),
                     "bytes_down_total": 1000 * r if kind == "federated" else 0,
                     "bytes_up_total": 900 * r if kind == "federated" else 0,
                     **({"agg_rel_error": 0.1 * r} if kind == "federated" and r else {})}
                    for r in range(cfg.federation.num_rounds + 1)]
            n = len(self.calls)
            if n in (self.interrupt_at, self.fail_at):
                (out_dir / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
                if self.checkpoint and kind == "federated":
                    (out_dir / "checkpoint").mkdir()
                    (out_dir / "checkpoint" / "checkpoint.safetensors").write_bytes(b"x")
                if n == self.interrupt_at:
                    raise KeyboardInterrupt
                raise ValueError("boom")
            (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            return {"final": rows[-1]}
        return run

    def runners(self):
        return {k: self.runner(k) for k in ("federated", "centralized", "local")}


def _settings(tmp_path, *extra):
    return compose_settings(["preset=smoke", f"compare.out_dir={tmp_path}", "compare.name=fake",
                             "compare.strategies=[fedit]", "compare.scenarios=[natural]",
                             f"federation.num_rounds={ROUNDS}", *extra])


def _done_markers(out: Path) -> dict[str, str]:
    return {str(p.parent.relative_to(out)): p.read_text() for p in sorted(out.rglob("done.json"))}


def test_interrupted_sweep_reruns_only_what_is_missing(tmp_path):
    settings, runs = _settings(tmp_path)
    first = Fake(interrupt_at=3)
    plan, outcome, report = run_comparison(settings, runs, first.runners(), say=lambda _: None)
    assert outcome.interrupted and len(outcome.ran) == 2 and len(plan.runs) == 9
    assert "Incomplete" in report["text"]
    before = _done_markers(tmp_path)
    assert len(before) == 2

    second = Fake()
    _, outcome2, _ = run_comparison(settings, runs, second.runners(), say=lambda _: None)
    assert outcome2.complete and outcome2.done_before == 2 and len(second.calls) == 7
    called = {Path(d).relative_to(tmp_path).as_posix() for d, _ in second.calls}
    assert not called & set(before)  # finished runs were not run again ...
    after = _done_markers(tmp_path)
    assert {k: after[k] for k in before} == before  # ... and their markers are untouched
    assert len(after) == 9

    third = Fake()
    _, outcome3, _ = run_comparison(settings, runs, third.runners(), say=lambda _: None)
    assert third.calls == [] and outcome3.complete and outcome3.done_before == 9


def test_interrupted_federated_run_resumes_from_its_checkpoint(tmp_path):
    settings, runs = _settings(tmp_path)
    run_comparison(settings, runs, Fake(interrupt_at=1, checkpoint=True).runners(), say=lambda _: None)
    fake = Fake()
    run_comparison(settings, runs, fake.runners(), say=lambda _: None)
    run_dir = tmp_path / "natural" / "fedit" / "seed0"
    assert fake.calls[0] == (str(run_dir), str(run_dir))  # cfg.resume points at the run directory
    meta = json.loads((run_dir / "run.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["interrupted", "done"]
    assert [a["resumed"] for a in meta["attempts"]] == [False, True]
    done = json.loads((run_dir / "done.json").read_text())
    assert done["wall_s"] == pytest.approx(sum(a["seconds"] for a in meta["attempts"]), abs=2e-3)


def test_failures_are_recorded_reported_and_retried(tmp_path):
    settings, runs = _settings(tmp_path)
    plan, outcome, report = run_comparison(settings, runs, Fake(fail_at=2).runners(), say=lambda _: None)
    failed_id = plan.runs[1].run_id
    assert list(outcome.failed) == [failed_id] and not outcome.complete and len(outcome.ran) == 8
    assert "ValueError: boom" in report["text"] and failed_id in report["text"]
    retry = Fake()
    _, outcome2, report2 = run_comparison(settings, runs, retry.runners(), say=lambda _: None)
    assert len(retry.calls) == 1 and outcome2.complete and "Failed" not in report2["text"]


def test_max_runs_and_changed_config(tmp_path):
    settings, runs = _settings(tmp_path, "compare.max_runs=4")
    _, outcome, _ = run_comparison(settings, runs, Fake().runners(), say=lambda _: None)
    assert len(outcome.ran) == 4 and outcome.left == 5 and not outcome.complete
    settings, runs = _settings(tmp_path)
    fake = Fake()
    run_comparison(settings, runs, fake.runners(), say=lambda _: None)
    assert len(fake.calls) == 5
    # Another number of rounds changes every run's fingerprint: everything is redone.
    settings, runs = compose_settings(["preset=smoke", f"compare.out_dir={tmp_path}",
                                       "compare.strategies=[fedit]", "compare.scenarios=[natural]",
                                       f"federation.num_rounds={ROUNDS + 1}"])
    again = Fake()
    _, outcome, _ = run_comparison(settings, runs, again.runners(), say=lambda _: None)
    assert len(again.calls) == 9 and outcome.complete


def test_table_matches_an_independent_recomputation(tmp_path):
    settings, runs = _settings(tmp_path)
    lines = []
    _, _, report = run_comparison(settings, runs, Fake().runners(), say=lines.append)
    for method in ("fedit", "centralized", "local"):
        for metric in ("eval_accuracy", "eval_loss"):
            check_table(tmp_path, "natural", method, metric, seeds=3)
    fedit = next(r for r in report["rows"] if r["method"] == "fedit")
    assert fedit["bytes_down_mean"] == 1000 * ROUNDS and fedit["bytes_up_mean"] == 900 * ROUNDS
    assert fedit["agg_rel_error_mean"] == pytest.approx(0.2)  # mean of 0.1, 0.2, 0.3
    local = next(r for r in report["rows"] if r["method"] == "local")
    assert math.isnan(local["agg_rel_error_mean"]) and local["bytes_down_mean"] == 0
    assert "| fedit | 3/3 |" in report["text"] and "centralized (upper ref.)" in report["text"]
    assert {p.name for p in report["plots"]} == {"natural-round.png", "natural-bytes.png"}
    assert all(p.stat().st_size > 5000 for p in report["plots"])
    assert any("ETA" in line for line in lines) and any(line.startswith("[compare 9/9]") for line in lines)
    plan_file = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan_file["runs"]) == 9
    assert plan_file["runs"][0]["command"].startswith("python -m simulations.run")


def test_private_runs_show_the_epsilon_they_spent(tmp_path):
    """A scenario whose runs record dp_epsilon gets an epsilon column with the last round's value
    (mean over seeds); baselines, which spend none, show a dash; without DP there is no column."""
    fake = Fake()
    plain = fake.runner("federated")

    def private(cfg, out_dir: Path):
        out = plain(cfg, out_dir)
        rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
        for r in rows[1:]:
            r["dp_epsilon"] = 2.0 * r["round"] + cfg.train.seed  # last round: 6, 7, 8 over seeds 0..2
        (Path(out_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out

    settings, runs = _settings(tmp_path)
    runners = {**fake.runners(), "federated": private}
    _, _, report = run_comparison(settings, runs, runners, say=lambda _: None)
    fedit = next(r for r in report["rows"] if r["method"] == "fedit")
    assert fedit["dp_epsilon_mean"] == pytest.approx(7.0)
    header = next(line for line in report["text"].splitlines() if line.startswith("| method |"))
    assert header.rstrip(" |").endswith("epsilon")
    assert any(line.startswith("| fedit |") and line.rstrip(" |").endswith("7.000")
               for line in report["text"].splitlines())
    assert any(line.startswith("| centralized") and line.rstrip(" |").endswith("–")
               for line in report["text"].splitlines())
    other, runs2 = _settings(tmp_path / "plain")
    _, _, plain_report = run_comparison(other, runs2, Fake().runners(), say=lambda _: None)
    assert "epsilon" not in plain_report["text"]
