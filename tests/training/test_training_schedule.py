"""Round-level learning-rate schedules: endpoints and midpoints against closed forms."""

from __future__ import annotations

import itertools
import math

import pytest

from fedlora.config.schema import TrainConfig
from fedlora.training.schedule import lr_for_round


def test_constant() -> None:
    cfg = TrainConfig(lr=3e-4, lr_schedule="constant", lr_min_ratio=0.1)
    assert [lr_for_round(cfg, r, 5) for r in range(1, 6)] == [3e-4] * 5


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_runs_from_lr_to_lr_times_min_ratio(schedule: str) -> None:
    cfg = TrainConfig(lr=1e-3, lr_schedule=schedule, lr_min_ratio=0.1)
    lrs = [lr_for_round(cfg, r, 5) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[2] == pytest.approx(5.5e-4)  # both pass through the midpoint at the middle round


def test_cosine_and_linear_closed_forms() -> None:
    cos = TrainConfig(lr=2.0, lr_schedule="cosine", lr_min_ratio=0.0)
    lin = TrainConfig(lr=2.0, lr_schedule="linear", lr_min_ratio=0.0)
    # round 2 of 4: progress 1/3
    assert lr_for_round(cos, 2, 4) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 3)))  # 1.5
    assert lr_for_round(lin, 2, 4) == pytest.approx(2.0 * (1 - 1 / 3))
    assert lr_for_round(cos, 4, 4) == pytest.approx(0.0, abs=1e-12)


def test_single_round_uses_the_base_lr() -> None:
    assert lr_for_round(TrainConfig(lr=0.01, lr_schedule="cosine"), 1, 1) == 0.01


def test_invalid_inputs_name_the_field() -> None:
    cfg = TrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match=r"server_round: expected a round in \[1, 3\], got 0"):
        lr_for_round(cfg, 0, 3)
    with pytest.raises(ValueError, match="server_round"):
        lr_for_round(cfg, 4, 3)
    with pytest.raises(ValueError, match=r"train\.lr_schedule: expected one of"):
        lr_for_round(TrainConfig(lr_schedule="step"), 1, 3)


def test_eval_schedule_every_k_rounds_plus_round_zero_and_the_last() -> None:
    from fedlora.training.schedule import eval_rounds, evaluates

    assert eval_rounds(5, 2) == [0, 2, 4, 5]
    assert eval_rounds(5, 1) == [0, 1, 2, 3, 4, 5]
    assert eval_rounds(4, 2) == [0, 2, 4]
    assert eval_rounds(3, 10) == [0, 3]
    # a run that ends early (a privacy budget) at round 3 of 5 is evaluated after round 3
    assert evaluates(3, 3, 2) and not evaluates(3, 5, 2)
    with pytest.raises(ValueError, match=r"federation\.eval_every"):
        evaluates(1, 5, 0)
