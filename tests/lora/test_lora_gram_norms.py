"""The Gram-based norms of ``fedlora.lora.factored`` against the QR-based definitions they replaced.

The ``_old_*`` functions are the previous implementations, kept here only as reference definitions:
a thin QR of both factors and the Frobenius norm of the R x R core.
"""

import pytest
import torch

from fedlora.lora.factored import (
    CoreSVD,
    Factors,
    Gram,
    frobenius_norm,
    keep_count,
    relative_error,
    stack,
    tail_norm,
)


def _old_norm(f: Factors) -> float:
    _, r_b = torch.linalg.qr(f.B, mode="reduced")
    _, r_a = torch.linalg.qr(f.A.transpose(0, 1), mode="reduced")
    return float(torch.linalg.matrix_norm(r_b @ r_a.transpose(0, 1), ord="fro"))


def _old_tail(f: Factors, k: int) -> float:
    return 0.0 if k >= f.rank else _old_norm(Factors(B=f.B[:, k:], A=f.A[k:]))


def _old_relative_error(approx: Factors, exact: Factors) -> tuple[float, float]:
    diff = Factors(B=torch.cat([approx.B, -exact.B], dim=1), A=torch.cat([approx.A, exact.A], dim=0))
    return _old_norm(diff), _old_norm(exact)


def _f(out, inn, r, seed, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return Factors(B=(scale * torch.randn(out, r, generator=g, dtype=torch.float64)).to(dtype),
                   A=(torch.randn(r, inn, generator=g, dtype=torch.float64) / inn**0.5).to(dtype))


def _as64(f: Factors) -> Factors:
    return Factors(B=f.B.double(), A=f.A.double())


SHAPES = [(12, 9, 3), (40, 25, 7), (300, 200, 24), (128, 512, 40)]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norm_and_tails_match_the_qr_definition(shape, dtype):
    out, inn, r = shape
    f = _f(out, inn, r, 1, dtype, scale=0.02)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    ref = _old_norm(_as64(f))  # the old definition, evaluated without round-off of its own
    assert frobenius_norm(f) == pytest.approx(ref, rel=tol)
    assert frobenius_norm(f) == pytest.approx(_old_norm(f), rel=max(tol, 1e-6))
    gram = Gram.of(f)
    assert gram.norm() == pytest.approx(ref, rel=tol)
    for k in (0, 1, r // 2, r - 1, r, r + 3):
        want = _old_tail(_as64(f), k)
        assert tail_norm(f, k) == pytest.approx(want, rel=tol, abs=1e-12)
        assert gram.tail_norm(k) == pytest.approx(want, rel=tol, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relative_error_with_a_real_gap_matches_the_qr_definition(shape, dtype):
    out, inn, r = shape
    exact = stack([_f(out, inn, r, 2, dtype), _f(out, inn, r // 2 + 1, 3, dtype)], [0.7, 0.3])
    for scale in (1e-2, 1e-1, 1.0):  # approx = exact + a perturbation of relative size ~scale
        approx = stack([exact, _f(out, inn, 2, 4, dtype, scale=scale)])
        diff, norm = relative_error(approx, exact)
        ref_diff, ref_norm = _old_relative_error(_as64(approx), _as64(exact))
        assert norm == pytest.approx(ref_norm, rel=1e-6 if dtype == torch.float32 else 1e-12)
        assert diff / norm == pytest.approx(ref_diff / ref_norm, rel=1e-5 if scale < 0.1 else 1e-6)
        old_diff, old_norm = _old_relative_error(approx, exact)  # the old float32/64 values as they were
        assert diff / norm == pytest.approx(old_diff / old_norm, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relative_error_of_exactly_equal_updates_is_round_off(shape, dtype):
    out, inn, r = shape
    y = stack([_f(out, inn, r, 5, dtype), _f(out, inn, r, 6, dtype)], [0.4, 0.6])
    # the same matrix in other factors: permuted components, and an invertible mix M, M^-1
    perm = torch.randperm(y.rank, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    m = torch.eye(y.rank, dtype=torch.float64)
    m = m + 0.1 * torch.randn(y.rank, y.rank, generator=g, dtype=torch.float64)
    mixed = Factors(B=(y.B.double() @ m).to(dtype), A=(torch.linalg.inv(m) @ y.A.double()).to(dtype))
    for x in (y, Factors(B=y.B[:, perm], A=y.A[perm]), mixed):
        diff, norm = relative_error(x, y)
        old_diff, old_norm = _old_relative_error(x, y)
        ref_diff, ref_norm = _old_relative_error(_as64(x), _as64(y))
        # the old value in the factors' own dtype is the old QR's round-off (up to ~2e-6 in float32
        # at rank 80, even for x == y); against the old definition in float64 the new one is closer
        assert diff / norm == pytest.approx(old_diff / old_norm, abs=3e-6)
        assert diff / norm == pytest.approx(ref_diff / ref_norm, abs=1e-6)
        assert diff / norm < (1e-6 if dtype == torch.float32 else 1e-7)


def test_zero_and_empty_updates():
    z = Factors(B=torch.zeros(5, 0), A=torch.zeros(0, 4))
    assert frobenius_norm(z) == 0.0 and relative_error(z, z) == (0.0, 0.0)
    f = _f(5, 4, 2, 8, torch.float32)
    assert relative_error(z, f)[0] == pytest.approx(frobenius_norm(f))
    assert relative_error(f, z) == (pytest.approx(frobenius_norm(f)), 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_core_svd_residual_and_block_norm_match_the_qr_definition(shape, dtype):
    out, inn, r = shape
    parts = [_f(out, inn, r, 9, dtype), _f(out, inn, r // 2 + 1, 10, dtype)]
    f = stack(parts, [0.5, 0.5])
    core = CoreSVD.of(f)
    for k in (keep_count(core.s), 1, max(r // 2, 1)):  # exact (all kept) and truncated
        lifted = core.lift(k).factors
        diff, norm = core.residual(k)
        old_diff, old_norm = _old_relative_error(lifted, f)
        ref_diff, ref_norm = _old_relative_error(_as64(lifted), _as64(f))
        assert norm == pytest.approx(ref_norm, rel=1e-6 if dtype == torch.float32 else 1e-12)
        if k == keep_count(core.s):  # exact: both are round-off
            assert diff / norm == pytest.approx(old_diff / old_norm, abs=1e-6)
            assert diff / norm == pytest.approx(ref_diff / ref_norm, abs=1e-6)
        else:  # a real gap, which is also the discarded tail of the singular values
            assert diff / norm == pytest.approx(ref_diff / ref_norm, rel=1e-5)
            assert diff == pytest.approx(float((core.s[k:].double() ** 2).sum()) ** 0.5, rel=1e-5)
    assert core.block_norm(0, r) == pytest.approx(_old_norm(_as64(parts[0])) * 0.5, rel=1e-5)
    assert core.block_norm(r, f.rank) == pytest.approx(_old_norm(_as64(parts[1])) * 0.5, rel=1e-5)
