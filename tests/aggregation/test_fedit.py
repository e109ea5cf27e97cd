"""FedIT against a hand-computed weighted mean and an independently computed gap to the oracle."""

import pytest
import torch

from fedlora.aggregation import ClientSpec, ClientUpdate, GlobalAdapter, get_aggregator
from tests.conftest import random_state

SHAPES = {
    "m.lin.lora_A.weight": (4, 12), "m.lin.lora_B.weight": (10, 4),
    "m.conv.lora_A.weight": (4, 12), "m.conv.lora_B.weight": (9, 4),
    "m.head.weight": (3, 10),
}


def _updates(counts):
    return [ClientUpdate(ClientSpec(str(i), 4, 8.0), random_state(SHAPES, 10 + i), n)
            for i, n in enumerate(counts)]


def _fedit():
    agg = get_aggregator("fedit")(alpha=8.0)
    agg.init_state(GlobalAdapter(random_state(SHAPES, 0), 4, 8.0))
    return agg


def test_fedit_equals_hand_computed_weighted_mean():
    updates = _updates([10, 30, 60])
    agg = _fedit()
    agg.aggregate(updates)
    state = agg.global_adapter().state
    for key in SHAPES:  # p = 0.1, 0.3, 0.6 by hand
        expected = 0.1 * updates[0].state[key] + 0.3 * updates[1].state[key] + 0.6 * updates[2].state[key]
        torch.testing.assert_close(state[key], expected)


def test_fedit_reported_gap_equals_independent_dense_gap():
    updates = _updates([5, 15])
    agg = _fedit()
    metrics = agg.aggregate(updates)
    p, s = [0.25, 0.75], 8.0 / 4
    num = den = 0.0
    worst = 0.0
    for m in ("m.lin", "m.conv"):
        oracle = sum(pk * s * u.state[f"{m}.lora_B.weight"] @ u.state[f"{m}.lora_A.weight"]
                     for pk, u in zip(p, updates, strict=True))
        mean_b = sum(pk * u.state[f"{m}.lora_B.weight"] for pk, u in zip(p, updates, strict=True))
        mean_a = sum(pk * u.state[f"{m}.lora_A.weight"] for pk, u in zip(p, updates, strict=True))
        d = (s * mean_b @ mean_a - oracle).norm().item()
        num += d**2
        den += oracle.norm().item() ** 2
        worst = max(worst, d / oracle.norm().item())
    assert metrics["agg-rel-error"] == pytest.approx((num / den) ** 0.5, rel=1e-9)
    assert metrics["agg-rel-error-max"] == pytest.approx(worst, rel=1e-9)
    assert metrics["agg-rel-error"] > 0.1  # random clients: FedIT is far from exact


def test_fedit_is_exact_when_clients_agree():
    same = random_state(SHAPES, 3)
    updates = [ClientUpdate(ClientSpec(str(i), 4, 8.0), same, n) for i, n in enumerate([1, 2, 3])]
    metrics = _fedit().aggregate(updates)
    assert metrics["agg-rel-error"] < 1e-12


def test_fedit_does_not_mutate_inputs():
    updates = _updates([1, 1])
    before = {k: v.clone() for k, v in updates[0].state.items()}
    _fedit().aggregate(updates)
    assert all(torch.equal(before[k], updates[0].state[k]) for k in before)


def test_fedit_refuses_mixed_ranks():
    agg = _fedit()
    with pytest.raises(ValueError, match="ffa, flora, flexlora or hetlora"):
        agg.payload(ClientSpec("x", 8, 8.0))


def test_unknown_strategy_lists_registered_names():
    with pytest.raises(KeyError, match=r"registered: \['fedit'"):
        get_aggregator("fedavg-magic")
