"""Fault injection: which faults fire when, and what each does to a reply (no model, no Flower)."""

import math

import pytest
import torch

from fedlora.config import compose
from fedlora.training.faults import HUGE_VALUE, INFLATED_COUNT, apply_faults, faults_for
from tests.conftest import random_state

SHAPES = {"m.q.lora_A.weight": (4, 6), "m.q.lora_B.weight": (5, 4), "m.v.lora_A.weight": (4, 6),
          "m.v.lora_B.weight": (5, 4), "m.head.weight": (3, 5)}
METRICS = {"num-examples": 24, "train-loss": 0.5}


def _cfg(*faults, timeout=20.0):
    return compose(["preset=smoke", f"federation.round_timeout_s={timeout}", f"faults=[{','.join(faults)}]"])


def _apply(cfg, pid=1, rnd=1, sleep=None):
    state = random_state(SHAPES, 0, torch.float32)
    kwargs = {"sleep": sleep} if sleep else {}
    return state, *apply_faults(cfg, pid, rnd, state, dict(METRICS), **kwargs)


def test_faults_fire_for_their_partition_and_round_only():
    specs = ["nan@1@2", "slow@1", "raise@0@1"]
    assert faults_for(specs, 1, 2) == ["nan", "slow"]
    assert faults_for(specs, 1, 3) == ["slow"]  # no round: every round
    assert faults_for(specs, 0, 1) == ["raise"] and faults_for(specs, 2, 1) == []


def test_no_matching_fault_returns_the_reply_unchanged():
    state = random_state(SHAPES, 0, torch.float32)
    metrics = dict(METRICS)
    out, m = apply_faults(_cfg("nan@3"), 1, 1, state, metrics)
    assert out is state and m is metrics


@pytest.mark.parametrize("kind,value", [("nan", math.nan), ("inf", math.inf)])
def test_nan_and_inf_corrupt_exactly_one_element(kind, value):
    state, out, metrics = _apply(_cfg(f"{kind}@1"))
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in out.items()}
    assert sum(bad.values()) == 1 and bad["m.q.lora_A.weight"] == 1
    assert (math.isnan(out["m.q.lora_A.weight"].view(-1)[0]) if kind == "nan"
            else out["m.q.lora_A.weight"].view(-1)[0] == value)
    assert torch.isfinite(state["m.q.lora_A.weight"]).all()  # the caller's tensor is not touched
    assert metrics == METRICS


def test_wrong_shape_drops_one_column_of_one_tensor():
    state, out, _ = _apply(_cfg("wrong_shape@1"))
    changed = [k for k in state if out[k].shape != state[k].shape]
    assert len(changed) == 1
    k = changed[0]
    assert out[k].shape == (state[k].shape[0], state[k].shape[1] - 1)


def test_wrong_rank_is_a_well_formed_adapter_of_rank_plus_one():
    state, out, _ = _apply(_cfg("wrong_rank@1"))
    for m in ("m.q", "m.v"):
        A, B = out[f"{m}.lora_A.weight"], out[f"{m}.lora_B.weight"]
        assert A.shape == (5, 6) and B.shape == (5, 5)
        torch.testing.assert_close(B @ A, state[f"{m}.lora_B.weight"] @ state[f"{m}.lora_A.weight"])
    assert torch.equal(out["m.head.weight"], state["m.head.weight"])


def test_inflated_count_and_huge_values():
    _, out, metrics = _apply(_cfg("inflated_count@1"))
    assert metrics["num-examples"] == INFLATED_COUNT == 10**15
    _, out, _ = _apply(_cfg("huge_values@1"))
    huge = out["m.q.lora_A.weight"]
    assert torch.isfinite(huge).all() and bool((huge == HUGE_VALUE).all())


def test_raise_raises_and_silence_outlasts_the_round_timeout_then_raises():
    with pytest.raises(RuntimeError, match="injected fault raise"):
        _apply(_cfg("raise@1"))
    slept = []
    with pytest.raises(RuntimeError, match="injected fault silence"):
        _apply(_cfg("silence@1", timeout=20.0), sleep=slept.append)
    assert slept == [25.0]


@pytest.mark.parametrize("timeout,expected", [(20.0, 2.0), (4.0, 1.0)])
def test_slow_sleeps_then_answers_normally(timeout, expected):
    slept = []
    state, out, metrics = _apply(_cfg("slow@1", timeout=timeout), sleep=slept.append)
    assert slept == [expected]
    assert all(torch.equal(out[k], state[k]) for k in state) and metrics == METRICS
