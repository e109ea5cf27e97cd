"""Factored maths against dense references (float64)."""

import torch

from fedlora.lora.factored import Factors, difference, frobenius_norm, stack, svd, truncate


def _f(out, inn, r, seed):
    g = torch.Generator().manual_seed(seed)
    return Factors(B=torch.randn(out, r, generator=g, dtype=torch.float64),
                   A=torch.randn(r, inn, generator=g, dtype=torch.float64))


def test_stack_equals_weighted_dense_sum():
    parts, w = [_f(20, 30, r, s) for s, r in enumerate([2, 5, 3])], [0.2, 0.5, 0.3]
    dense = sum(wi * p.dense() for wi, p in zip(w, parts, strict=True))
    torch.testing.assert_close(stack(parts, w).dense(), dense)


def test_norm_and_difference_match_dense():
    x, y = _f(25, 18, 4, 1), _f(25, 18, 6, 2)
    assert abs(frobenius_norm(x) - torch.linalg.matrix_norm(x.dense()).item()) < 1e-10
    ref = torch.linalg.matrix_norm(x.dense() - y.dense()).item()
    assert abs(frobenius_norm(difference(x, y)) - ref) < 1e-10


def test_svd_matches_dense_singular_values():
    f = _f(40, 30, 7, 3)
    u, s, vh = svd(f)
    torch.testing.assert_close(s, torch.linalg.svdvals(f.dense())[:7])
    torch.testing.assert_close(u @ torch.diag(s) @ vh, f.dense())


def test_truncate_is_eckart_young_and_reports_energy():
    f = _f(40, 30, 9, 4)
    t = truncate(f, rank=3)
    u, s, vh = torch.linalg.svd(f.dense())
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    assert (t.factors.dense() - best).norm() / best.norm() < 1e-10
    assert abs(t.energy_kept - float((s[:3] ** 2).sum() / (s**2).sum())) < 1e-12
    by_energy = truncate(f, energy=t.energy_kept)
    assert by_energy.factors.rank == 3
