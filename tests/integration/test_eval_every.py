"""``federation.eval_every``: central evaluation after rounds 0, k, 2k, ... and the last, end to end.

One real run (``python -m simulations.run``, smoke preset, 3 rounds, ``eval_every=2``) evaluates
rounds 0, 2 and 3 only; round 1's row has no ``eval_*`` values anywhere (JSONL, CSV, TensorBoard),
the plot is drawn, and the export (``select=last``) is round 3's adapter, whose reload reproduces
round 3's evaluation. A resume to 6 rounds with ``export.select=best`` keeps the schedule (4 and 6
evaluated, 5 not) and exports the best evaluated round.
"""

from __future__ import annotations

import csv
import json

import pytest

from fedlora.export.adapter import MANIFEST
from fedlora.results import read_jsonl
from tests.integration.runs import run_to_end

pytestmark = pytest.mark.integration
RUN = ["preset=smoke", "federation.num_rounds=3", "federation.eval_every=2", "tensorboard=true",
       "progress=log"]


def _evaluated(rows):
    return [r["round"] for r in rows if "eval_loss" in r]


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_every")
    return out, run_to_end(RUN, out)


def test_only_scheduled_rounds_are_evaluated_and_files_cope(sparse_run):
    from fedlora.results.tensorboard import read_scalars

    out, summary = sparse_run
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert _evaluated(rows) == [0, 2, 3]
    assert not [k for k in rows[1] if k.startswith("eval_")]  # the evaluator did not run for round 1
    assert all(r["train_loss"] > 0 for r in rows[1:])  # round 1 trained all the same
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["round"] for t in table] == ["0", "1", "2", "3"]
    assert table[1]["eval_loss"] == "" and table[1]["eval_accuracy"] == ""
    assert all(float(table[i]["eval_loss"]) == rows[i]["eval_loss"] for i in (0, 2, 3))
    assert (out / "metrics.png").stat().st_size > 0 and summary["plot"]
    scalars = read_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["eval/loss"]] == [0, 2, 3]
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]


def test_export_last_is_the_last_evaluated_round(sparse_run):
    out, summary = sparse_run
    last = read_jsonl(out / "metrics.jsonl")[-1]
    assert summary["exported_round"] == {"select": "last", "round": 3}
    assert summary["export_check"]["matches"] is True
    assert summary["export_check"]["server"]["loss"] == last["eval_loss"]
    manifest = json.loads((out / "adapter" / MANIFEST).read_text())
    assert manifest["selected"] == {"select": "last", "round": 3}
    assert manifest["final_metrics"] == {k[5:]: v for k, v in last.items() if k.startswith("eval_")}
    assert summary["best_round"]["round"] in (0, 2, 3)


def test_resume_keeps_the_schedule_and_select_best_picks_an_evaluated_round(sparse_run):
    out, _ = sparse_run
    summary = run_to_end([*RUN[:1], "federation.num_rounds=6", *RUN[2:], "export.select=best",
                          f"resume={out}"], out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(7))
    assert _evaluated(rows) == [0, 2, 3, 4, 6]  # 3 was the last round of the first attempt
    evaluated = [r for r in rows if "eval_accuracy" in r]
    top = max(r["eval_accuracy"] for r in evaluated)
    best = next(r for r in evaluated if r["eval_accuracy"] == top)  # ties: the earliest round
    assert summary["best_round"]["round"] == best["round"]
    assert summary["exported_round"]["select"] == "best"
    assert summary["exported_round"]["round"] == best["round"]
    # the reload of the export reproduces that round's central evaluation
    assert summary["export_check"]["matches"] is True
    assert summary["export_check"]["server"]["accuracy"] == best["eval_accuracy"]
    assert summary["export_check"]["server"]["loss"] == best["eval_loss"]
    manifest = json.loads((out / "adapter" / MANIFEST).read_text())
    assert manifest["selected"]["round"] == best["round"]
    assert manifest["final_metrics"]["accuracy"] == best["eval_accuracy"]
