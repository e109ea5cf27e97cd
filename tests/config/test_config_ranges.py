"""Numbers are finite and in range; fault specs and run-level options are checked up front."""

from __future__ import annotations

import pytest

from fedlora.config import ConfigError, compose
from fedlora.config.faults import parse_fault


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=inf", "lora.alpha=nan",
                                      "data.dirichlet_alpha=-inf", "train.max_grad_norm=nan",
                                      "federation.max_update_norm=inf"])
def test_nan_and_inf_are_refused_naming_the_field(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        compose(["preset=smoke", override])
    assert any(p.startswith(f"{field}: expected a finite number") for p in info.value.problems), info.value


def test_new_choices_and_bounds_are_checked():
    with pytest.raises(ConfigError) as info:
        compose(["preset=smoke", "federation.weighting=size", "export.select=first",
                 "federation.max_failed_rounds=-1", "lora.max_rank=2"])
    text = str(info.value)
    assert "federation.weighting: expected one of ['dataset', 'examples', 'uniform']" in text
    assert "export.select: expected one of ['last', 'best']" in text
    assert "federation.max_failed_rounds" in text
    assert "exceed lora.max_rank=2" in text  # lora.r=4 in the smoke preset


def test_faults_parse_and_bad_specs_are_named():
    assert parse_fault("nan@1") == ("nan", 1, None)
    assert parse_fault("wrong_shape@2@3") == ("wrong_shape", 2, 3)
    cfg = compose(["preset=smoke", "faults=[nan@1,silence@0@2]"])
    assert cfg.faults == ["nan@1", "silence@0@2"]
    with pytest.raises(ConfigError) as info:
        compose(["preset=smoke", "faults=[boom@1,nan@x,nan@1@0]"])
    assert len(info.value.problems) == 3
    assert "'boom@1' is not kind@partition[@round]" in info.value.problems[0]


def test_overwrite_and_resume_together_are_refused(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(ConfigError, match="overwrite: cannot be combined with resume"):
        compose(["preset=smoke", "overwrite=true", f"resume={tmp_path}"])


def test_eval_every_is_at_least_one():
    assert compose(["preset=smoke"]).federation.eval_every == 1
    assert compose(["preset=smoke", "federation.eval_every=3"]).federation.eval_every == 3
    for bad in (0, -2):
        with pytest.raises(ConfigError) as info:
            compose(["preset=smoke", f"federation.eval_every={bad}"])
        expected = f"federation.eval_every: expected an integer >= 1 (1 = every round), got {bad}"
        assert expected in info.value.problems
