"""FLoRA stacking: exact round increments under the cap, compression against a dense SVD."""

import math

import pytest
import torch

from fedlora.aggregation import ClientSpec
from fedlora.lora.factored import Factors
from tests.aggregation.mixed import (
    ALPHA,
    MODULES,
    dense_global,
    dense_oracle,
    initial,
    make,
    rel,
    replies,
)


def _g(agg) -> dict[str, torch.Tensor]:
    """The dense global update, zero while G is empty (the initial adapter has B = 0)."""
    return dense_global(agg)


def test_flora_round_increment_equals_dense_oracle():
    agg = make("flora")
    assert agg.frozen(ClientSpec("c", 4, ALPHA)) is None
    assert all(float(g.abs().max()) == 0 for g in _g(agg).values())
    rounds = [([4, 8, 16], [10, 30, 60]), ([8, 8], [1, 2]), ([16, 4, 4, 8], [3, 1, 1, 5])]
    total_rank = 0
    for rnd, (ranks, counts) in enumerate(rounds, start=1):
        agg.begin_round(rnd)
        before = _g(agg)
        updates = replies(agg, ranks, counts, seed=100 * rnd)
        metrics = agg.aggregate(updates)
        after = _g(agg)
        total_rank += sum(ranks)
        for m in MODULES:
            assert rel(after[m] - before[m], dense_oracle(updates, m)) <= 1e-5
        assert metrics["agg-rel-error"] < 1e-10
        assert metrics["energy-kept"] == 1.0
        assert metrics["global-rank"] == total_rank
        assert metrics["cum-rel-error-bound"] == 0.0
        frozen = agg.frozen(ClientSpec("c", 4, ALPHA))
        for m in MODULES:  # the frozen adapter (scaling 1) is the whole global update
            torch.testing.assert_close(frozen[f"{m}.lora_B.weight"] @ frozen[f"{m}.lora_A.weight"], after[m])


def test_flora_fresh_payloads_are_seeded_kaiming_uniform_with_zero_b():
    agg = make("flora")
    agg.begin_round(1)
    p1 = agg.payload(ClientSpec("a", 8, ALPHA))
    for m, (out, inn) in MODULES.items():
        A, B = p1[f"{m}.lora_A.weight"], p1[f"{m}.lora_B.weight"]
        assert A.shape == (8, inn) and B.shape == (out, 8)
        assert float(B.abs().max()) == 0.0
        assert 0 < float(A.abs().max()) <= 1 / math.sqrt(inn)
    again = make("flora")
    again.begin_round(1)
    same = again.payload(ClientSpec("a", 8, ALPHA))
    assert all(torch.equal(p1[k], same[k]) for k in p1)  # reproducible in a fresh server
    other_client = agg.payload(ClientSpec("b", 8, ALPHA))
    agg.begin_round(2)
    other_round = agg.payload(ClientSpec("a", 8, ALPHA))
    key = "m.sq.lora_A.weight"
    assert not torch.equal(p1[key], other_client[key]) and not torch.equal(p1[key], other_round[key])
    seeded = make("flora", init_seed=7)
    seeded.begin_round(1)
    assert seeded.base_seed == 7 and not torch.equal(seeded.payload(ClientSpec("a", 8, ALPHA))[key], p1[key])


def _dense_truncation(x: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(x)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k], float((s[:k] ** 2).sum() / (s**2).sum())


def test_flora_compression_to_a_cap_is_the_dense_best_approximation():
    cap = 6
    agg = make("flora", rank_cap=cap)
    exact_sum = {m: 0 for m in MODULES}
    dense_g = {m: torch.zeros(MODULES[m]) for m in MODULES}
    dense_g_prev = {m: torch.zeros(MODULES[m], dtype=torch.float64) for m in MODULES}
    for rnd, ranks in enumerate([[4, 8, 16], [8, 4]], start=1):
        agg.begin_round(rnd)
        updates = replies(agg, ranks, [2, 3, 5][: len(ranks)], seed=7 * rnd)
        metrics = agg.aggregate(updates)
        energies = []
        for m in MODULES:
            oracle = dense_oracle(updates, m)
            exact_sum[m] = exact_sum[m] + oracle
            best, energy = _dense_truncation(dense_g[m].double() + oracle, cap)
            energies.append(energy)
            assert rel(_g(agg)[m], best) <= 1e-8
            dense_g[m] = best
        assert metrics["energy-kept"] == pytest.approx(min(energies), abs=1e-10)
        assert metrics["global-rank"] == cap
        num = sum(float((_g(agg)[m] - exact_sum[m]).norm()) ** 2 for m in MODULES) ** 0.5
        den = sum(float(_g(agg)[m].norm()) ** 2 for m in MODULES) ** 0.5
        assert num / den <= metrics["cum-rel-error-bound"] + 1e-12
        # the reported gap of the round's increment, against a dense computation
        before = dense_g_prev
        gap = sum(float((_g(agg)[m] - before[m] - dense_oracle(updates, m)).norm()) ** 2 for m in MODULES)
        ref = sum(float(dense_oracle(updates, m).norm()) ** 2 for m in MODULES)
        assert metrics["agg-rel-error"] == pytest.approx((gap / ref) ** 0.5, rel=1e-6)
        assert metrics["agg-rel-error"] > 0  # the increment lost what the cap dropped
        dense_g_prev = {m: _g(agg)[m].clone() for m in MODULES}


def test_flora_energy_target_keeps_the_fewest_components():
    agg = make("flora", energy=0.9)
    agg.begin_round(1)
    updates = replies(agg, [4, 8, 16], [1, 1, 1], seed=3)
    metrics = agg.aggregate(updates)
    ranks = agg.global_adapter().rank_pattern
    kept = []
    for m in MODULES:
        s = torch.linalg.svdvals(dense_oracle(updates, m))
        cum = torch.cumsum(s**2, 0) / (s**2).sum()
        k = int((cum < 0.9 - 1e-12).sum()) + 1
        assert ranks[m] == k
        kept.append(float(cum[k - 1]))
    assert metrics["energy-kept"] == pytest.approx(min(kept), abs=1e-10) and metrics["energy-kept"] >= 0.9


def test_flora_global_adapter_before_round_one_is_the_initial_adapter():
    agg = make("flora")
    adapter = agg.global_adapter()
    assert adapter.rank == initial().rank
    assert all(torch.equal(adapter.state[k], v) for k, v in initial().state.items())


def test_flora_global_adapter_patterns_fold_the_scaling():
    agg = make("flora")
    agg.begin_round(1)
    agg.aggregate(replies(agg, [4, 8], [1, 1], seed=1))
    adapter = agg.global_adapter()
    assert adapter.rank_pattern == {m: 12 for m in MODULES}
    assert all(adapter.module_scaling(m) == 1.0 for m in MODULES)
    f = adapter.factors()["m.sq"]
    assert isinstance(f, Factors) and f.rank == 12
