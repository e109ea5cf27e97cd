"""HetLoRA: zero-padded mean by hand, reported gap equal to an independent dense gap."""

import pytest
import torch

from fedlora.aggregation import ClientSpec
from tests.aggregation.mixed import (
    ALPHA,
    MODULES,
    R_MAX,
    dense_global,
    dense_oracle,
    make,
    rel,
    replies,
    weights,
)


def _pad_mean(updates, w, module):
    """Zero-pad (s_k B_k, A_k) to R_MAX by hand and take the weighted mean over all clients."""
    out, inn = MODULES[module]
    B, A = torch.zeros(out, R_MAX, dtype=torch.float64), torch.zeros(R_MAX, inn, dtype=torch.float64)
    for wk, u in zip(w, updates, strict=True):
        r = u.spec.rank
        B[:, :r] += wk * (ALPHA / r) * u.state[f"{module}.lora_B.weight"]
        A[:r] += wk * u.state[f"{module}.lora_A.weight"]
    return B, A


def _dense_gap(updates, products):
    num = den = worst = 0.0
    for m in MODULES:
        oracle = dense_oracle(updates, m)
        d = float((products[m] - oracle).norm())
        num, den = num + d**2, den + float(oracle.norm()) ** 2
        worst = max(worst, d / float(oracle.norm()))
    return (num / den) ** 0.5, worst


@pytest.mark.parametrize("norm_weighted", [False, True])
def test_hetlora_is_the_zero_padded_mean_and_reports_the_dense_gap(norm_weighted):
    agg = make("hetlora", norm_weighted=norm_weighted)
    updates = replies(agg, [4, 8, 16, 8], [10, 30, 60, 20], seed=11)
    metrics = agg.aggregate(updates)
    p = weights(updates)
    state = agg.global_adapter().state
    products = {}
    for m in MODULES:
        w = p
        if norm_weighted:
            norms = [float(((ALPHA / u.spec.rank) * u.state[f"{m}.lora_B.weight"]
                            @ u.state[f"{m}.lora_A.weight"]).norm()) for u in updates]
            raw = [pk * n for pk, n in zip(p, norms, strict=True)]
            w = [x / sum(raw) for x in raw]
        B, A = _pad_mean(updates, w, m)
        torch.testing.assert_close(state[f"{m}.lora_A.weight"], A)
        torch.testing.assert_close(state[f"{m}.lora_B.weight"] * (ALPHA / R_MAX), B)
        products[m] = B @ A
    overall, worst = _dense_gap(updates, products)
    assert metrics["agg-rel-error"] == pytest.approx(overall, rel=1e-9)
    assert metrics["agg-rel-error-max"] == pytest.approx(worst, rel=1e-9)
    assert metrics["agg-rel-error"] > 0.1


def test_hetlora_payload_is_the_leading_components_and_reports_the_prefix_error():
    agg = make("hetlora")
    agg.aggregate(replies(agg, [4, 8, 16], [1, 2, 3], seed=5))
    agg.begin_round(2)
    g = dense_global(agg)
    state = agg.global_adapter().state
    errors = []
    for r in (4, 8, 16):
        payload = agg.payload(ClientSpec(f"c{r}", r, ALPHA))
        for m in MODULES:
            assert torch.equal(payload[f"{m}.lora_A.weight"], state[f"{m}.lora_A.weight"][:r])
            start = (ALPHA / r) * payload[f"{m}.lora_B.weight"] @ payload[f"{m}.lora_A.weight"]
            errors.append(rel(start, g[m]))
    assert errors[-1] < 1e-12  # the full-rank client starts from the global update itself
    metrics = agg.payload_metrics()
    assert metrics["trunc-rel-error-max"] == pytest.approx(max(errors), rel=1e-9)
    assert metrics["trunc-rel-error-mean"] == pytest.approx(sum(errors) / len(errors), rel=1e-9)


def test_hetlora_slots_no_participant_holds_keep_their_previous_value():
    agg = make("hetlora")
    agg.aggregate(replies(agg, [4, 16], [1, 1], seed=1))
    before = agg.global_adapter().state
    updates = replies(agg, [4, 8], [1, 3], seed=2)
    metrics = agg.aggregate(updates)
    after = agg.global_adapter().state
    for m in MODULES:
        assert torch.equal(after[f"{m}.lora_A.weight"][8:], before[f"{m}.lora_A.weight"][8:])
        assert torch.equal(after[f"{m}.lora_B.weight"][:, 8:], before[f"{m}.lora_B.weight"][:, 8:])
        _, A = _pad_mean(updates, weights(updates), m)
        torch.testing.assert_close(after[f"{m}.lora_A.weight"][:8], A[:8])
    products = {m: dense_global(agg)[m] for m in MODULES}
    assert metrics["agg-rel-error"] == pytest.approx(_dense_gap(updates, products)[0], rel=1e-9)
