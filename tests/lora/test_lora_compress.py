"""Compression helpers of the factored maths and the state fingerprint, against dense references."""

import torch

from fedlora.lora.factored import (
    Factors,
    compress,
    empty,
    keep_count,
    split_svd,
    stack,
    svd,
    tail_norm,
    truncate,
)
from fedlora.lora.init import state_hash


def _f(out, inn, r, seed):
    g = torch.Generator().manual_seed(seed)
    return Factors(B=torch.randn(out, r, generator=g, dtype=torch.float64),
                   A=torch.randn(r, inn, generator=g, dtype=torch.float64))


def test_compress_under_the_cap_returns_the_factors_untouched():
    f = _f(30, 20, 6, 1)
    t = compress(f, rank=8)
    assert t.factors is f and t.energy_kept == 1.0 and t.discarded == 0.0
    assert compress(f).factors is f


def test_compress_over_the_cap_reports_energy_and_discarded_norm_of_a_dense_svd():
    f = stack([_f(30, 20, 6, 1), _f(30, 20, 5, 2)], [0.3, 0.7])
    t = compress(f, rank=4)
    s = torch.linalg.svdvals(f.dense())
    assert t.factors.rank == 4
    assert abs(t.energy_kept - float((s[:4] ** 2).sum() / (s**2).sum())) < 1e-12
    assert abs(t.discarded - float((f.dense() - t.factors.dense()).norm())) < 1e-10
    torch.testing.assert_close(t.singular_values, s[:4])


def test_keep_count_drops_numerical_zeros_and_honours_rank_and_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    assert keep_count(s) == 3
    assert keep_count(s, rank=2) == 2
    assert keep_count(s, energy=16 / 21) == 1 and keep_count(s, energy=0.9) == 2
    assert keep_count(torch.zeros(3)) == 0 and keep_count(torch.zeros(0)) == 0


def test_split_svd_and_tail_norm_match_dense():
    f = _f(25, 18, 7, 3)
    u, s, vh = svd(f)
    t = split_svd(u, s, vh, 3)
    d = torch.linalg.svd(f.dense())
    torch.testing.assert_close(t.factors.dense(), d.U[:, :3] @ torch.diag(d.S[:3]) @ d.Vh[:3])
    torch.testing.assert_close(t.factors.B.norm(dim=0), t.factors.A.norm(dim=1))  # even split
    head = Factors(B=f.B[:, :2], A=f.A[:2])
    assert abs(tail_norm(f, 2) - float((f.dense() - head.dense()).norm())) < 1e-10
    assert tail_norm(f, 7) == 0.0


def test_truncate_of_a_zero_update_keeps_one_zero_component_and_empty_stacks():
    z = Factors(B=torch.zeros(5, 3, dtype=torch.float64), A=torch.randn(3, 4, dtype=torch.float64))
    t = truncate(z, rank=2)
    assert t.factors.rank == 1 and float(t.factors.dense().abs().max()) == 0.0 and t.energy_kept == 1.0
    e = empty(5, 4, z.A)
    assert e.rank == 0 and e.dense().shape == (5, 4)
    g = _f(5, 4, 2, 1)
    torch.testing.assert_close(stack([e, g]).dense(), g.dense())


def test_state_hash_is_deterministic_dtype_blind_and_sensitive():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 6, generator=g)
    state = {"x.lora_A.weight": a, "y.lora_A.weight": a[:2]}
    h = state_hash(state)
    assert h == state_hash({k: v.clone() for k, v in reversed(list(state.items()))})
    assert h == state_hash({k: v.double() for k, v in state.items()})
    assert 0 <= h < 2**53 and isinstance(h, int)
    bumped = a.clone()
    bumped[3, 5] = torch.nextafter(bumped[3, 5], torch.tensor(2.0))
    assert state_hash({"x.lora_A.weight": bumped, "y.lora_A.weight": a[:2]}) != h
    assert state_hash({"x.lora_A.weight": a, "z.lora_A.weight": a[:2]}) != h
    assert state_hash({"x.lora_A.weight": a.reshape(6, 4), "y.lora_A.weight": a[:2]}) != h
