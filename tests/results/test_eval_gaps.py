"""Rounds without a central evaluation (``federation.eval_every``) downstream of the recorder.

Such a row has no ``eval_*`` keys: the CSV leaves the cells empty, the console table prints ``-``,
the plot draws only the evaluated rounds, the best round is chosen among them, and a comparison's
final/best values come from them.
"""

from __future__ import annotations

import csv
import math
from unittest.mock import Mock

import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config import compose
from fedlora.results import RunRecorder
from fedlora.results.plots import plot_run
from fedlora.strategies.run_state import RunProgress

EVALUATED = {0: 0.40, 2: 0.75, 3: 0.70}  # eval_accuracy of the rounds eval_every=2 evaluates in 3 rounds


def _record(tmp_path) -> RunRecorder:
    recorder = RunRecorder(tmp_path, "classification")
    for rnd in range(4):
        recorder.start_round(rnd)
        if rnd:
            recorder.add(clients=2, train_loss=1.0 / rnd, bytes_down=10, bytes_up=10)
        acc = EVALUATED.get(rnd)
        recorder.end_round(rnd, None if acc is None else {"accuracy": acc, "loss": 1.0 - acc})
    return recorder


def test_files_and_table_leave_the_unevaluated_round_empty(tmp_path):
    recorder = _record(tmp_path)
    assert not [k for k in recorder.rows[1] if k.startswith("eval_")]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["eval_accuracy"] == "" and rows[1]["eval_loss"] == "" and rows[1]["train_loss"] == "1.0"
    assert float(rows[2]["eval_accuracy"]) == 0.75
    lines = recorder.table_lines()
    header = lines[0].split()
    cells = lines[2].split()  # round 1
    assert cells[header.index("accuracy")] == "-" and cells[header.index("eval-loss")] == "-"
    assert cells[header.index("train-loss")] == "1.0000"


def test_the_plot_draws_only_evaluated_rounds(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: drawn.append(a) or real(self, *a, **k))
    recorder = _record(tmp_path)
    assert plot_run(recorder.rows, tmp_path / "metrics.png", "classification") is not None
    assert (tmp_path / "metrics.png").stat().st_size > 0
    evals, losses = drawn  # one line each, no NaN gap in either
    assert list(evals[0]) == [0, 2, 3] and list(evals[1]) == [0.40, 0.75, 0.70]
    assert list(losses[0]) == [1, 2, 3]
    assert not any(math.isnan(v) for v in [*evals[1], *losses[1]])


def test_best_round_is_chosen_among_the_evaluated_rounds(tmp_path):
    cfg = compose(["preset=smoke", f"output_dir={tmp_path}", "federation.num_rounds=3",
                   "federation.eval_every=2"])
    progress = RunProgress(cfg, tmp_path)
    recorder = RunRecorder(tmp_path, "classification")
    aggregator = Mock()
    for rnd in range(4):
        aggregator.global_adapter.return_value = GlobalAdapter({"w": torch.full((1,), float(rnd))}, 4, 8.0)
        acc = EVALUATED.get(rnd)
        recorder.start_round(rnd)
        progress.observe(rnd, recorder.end_round(rnd, None if acc is None else {"accuracy": acc}), aggregator)
    assert progress.best is not None and progress.best["round"] == 2
    assert progress.best_adapter is not None and float(progress.best_adapter.state["w"]) == 2.0
    assert progress.summary(recorder.rows[-1])["best_round"] == {
        "round": 2, "metric": "eval_accuracy", "value": 0.75, "final_value": 0.70}


def test_compare_values_use_the_evaluated_rounds(tmp_path):
    from fedlora.compare.table import RunResult, run_values

    rows = _record(tmp_path).rows
    values = run_values(RunResult(Mock(), rows, 1.0), ("eval_accuracy", "eval_loss"))
    assert values["eval_accuracy_final"] == 0.70 and values["eval_accuracy_best"] == 0.75
    assert math.isclose(values["eval_loss_best"], 0.25) and math.isclose(values["eval_loss_final"], 0.30)
    assert values["bytes_total"] == 60
