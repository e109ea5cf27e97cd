"""FlexLoRA: exact aggregate, per-client truncations equal to a dense SVD, kept energy reported."""

import pytest
import torch

from fedlora.aggregation import ClientSpec
from tests.aggregation.mixed import (
    ALPHA,
    HEAD,
    MODULES,
    dense_global,
    dense_oracle,
    initial,
    make,
    rel,
    replies,
)


def test_flexlora_first_payload_is_the_initial_a_rows_and_zero_b():
    agg = make("flexlora")
    agg.begin_round(1)
    init = initial().state
    for r in (4, 16):
        payload = agg.payload(ClientSpec("c", r, ALPHA))
        for m in MODULES:
            assert torch.equal(payload[f"{m}.lora_A.weight"], init[f"{m}.lora_A.weight"][:r])
            assert float(payload[f"{m}.lora_B.weight"].abs().max()) == 0.0
        assert torch.equal(payload[HEAD], init[HEAD])
    assert agg.payload_metrics()["trunc-energy-min"] == 1.0


def test_flexlora_global_update_equals_dense_oracle_every_round():
    agg = make("flexlora")
    rounds = [([4, 8, 16], [10, 30, 60]), ([16, 4, 8, 4], [5, 1, 1, 9])]
    for rnd, (ranks, counts) in enumerate(rounds, start=1):
        agg.begin_round(rnd)
        updates = replies(agg, ranks, counts, seed=20 * rnd)
        metrics = agg.aggregate(updates)
        got = dense_global(agg)
        for m in MODULES:
            assert rel(got[m], dense_oracle(updates, m)) <= 1e-5
        assert metrics["agg-rel-error"] < 1e-10
        assert metrics["global-rank"] == min(sum(ranks), max(MODULES["m.sq"]))


def test_flexlora_payloads_are_dense_svd_truncations_with_reported_energy():
    agg = make("flexlora")
    updates = replies(agg, [4, 8, 16], [1, 2, 3], seed=4)
    agg.aggregate(updates)
    agg.begin_round(2)
    energies = []
    for r in (4, 8, 16):
        payload = agg.payload(ClientSpec(f"c{r}", r, ALPHA))
        for m in MODULES:
            u, s, vh = torch.linalg.svd(dense_oracle(updates, m), full_matrices=False)
            best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]  # m.wide (10 x 14) has only 10 components
            start = (ALPHA / r) * payload[f"{m}.lora_B.weight"] @ payload[f"{m}.lora_A.weight"]
            assert rel(start, best) <= 1e-8
            energies.append(float((s[:r] ** 2).sum() / (s**2).sum()))
            # even split: both factors carry sqrt(S)
            k = min(r, s.numel())
            torch.testing.assert_close(payload[f"{m}.lora_A.weight"][:k].norm(dim=1) ** 2, s[:k])
    metrics = agg.payload_metrics()
    assert metrics["trunc-energy-min"] == pytest.approx(min(energies), abs=1e-10)
    assert metrics["trunc-energy-mean"] == pytest.approx(sum(energies) / len(energies), abs=1e-10)
    errors = [max(1 - e, 0) ** 0.5 for e in energies]
    assert metrics["trunc-rel-error-max"] == pytest.approx(max(errors), abs=1e-7)


def test_flexlora_pads_missing_components_like_a_fresh_lora():
    agg = make("flexlora")
    updates = replies(agg, [4], [1], seed=2)  # only a rank-4 client this round: G has rank 4
    agg.aggregate(updates)
    payload = agg.payload(ClientSpec("big", 16, ALPHA))
    init = initial().state
    for m in MODULES:
        A, B = payload[f"{m}.lora_A.weight"], payload[f"{m}.lora_B.weight"]
        assert torch.equal(A[4:], init[f"{m}.lora_A.weight"][4:16])
        assert float(B[:, 4:].abs().max()) == 0.0
        torch.testing.assert_close((ALPHA / 16) * B @ A, dense_oracle(updates, m))
