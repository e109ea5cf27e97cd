"""Linear algebra on factored updates ``B @ A`` that never forms the out x in matrix.

A server aggregating adapters for a 4096 x 4096 projection must not materialise it. Norms,
differences and truncations of a product ``B A`` (B: out x R, A: R x in) reduce to the small
R x R core of two thin QR decompositions: with ``B = Q_b R_b`` and ``A^T = Q_a R_a``,
``B A = Q_b (R_b R_a^T) Q_a^T``, so ``||B A||_F = ||R_b R_a^T||_F`` and the SVD of the core
gives the SVD of the product. Cost O((out + in) R^2) instead of O(out * in * R).

Norms need no QR at all: ``||B A||_F^2 = tr((B^T B)(A A^T))``, the sum of the elementwise product
of two R x R Gram matrices (:class:`Gram`), and ``<X, Y>_F = sum((B_x^T B_y) * (A_x A_y^T))``. The
Grams are formed in float64 whatever the factors' dtype (products of float32 entries are exact in
float64), so the norm of a difference, ``||X||^2 + ||Y||^2 - 2 <X, Y>``, cancels only to float64
round-off: a relative gap is resolved down to about 1e-7 (sqrt of float64's eps, times a small
factor), below which it reads as round-off, as the QR-based float32 value (about 1e-7) did.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factors:
    """A factored update ``B @ A`` (scaling already folded in)."""

    B: torch.Tensor  # out x R
    A: torch.Tensor  # R x in

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> torch.Tensor:
        """The out x in matrix; for tests and tiny modules only."""
        return self.B @ self.A


def stack(parts: Sequence[Factors], weights: Sequence[float] | None = None) -> Factors:
    """``sum_i w_i B_i A_i`` as one factored pair, by concatenation along the rank axis."""
    if not parts:
        raise ValueError("stack() needs at least one factored update")
    ws = list(weights) if weights is not None else [1.0] * len(parts)
    B = torch.cat([w * p.B for w, p in zip(ws, parts, strict=True)], dim=1)
    A = torch.cat([p.A for p in parts], dim=0)
    return Factors(B=B, A=A)


def core(f: Factors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin QR of both factors: returns ``(Q_b, C, Q_a)`` with ``B A = Q_b C Q_a^T``."""
    q_b, r_b = torch.linalg.qr(f.B, mode="reduced")
    q_a, r_a = torch.linalg.qr(f.A.transpose(0, 1), mode="reduced")
    return q_b, r_b @ r_a.transpose(0, 1), q_a


def _f64(f: Factors) -> Factors:
    return f if f.B.dtype == torch.float64 else Factors(B=f.B.double(), A=f.A.double())


def _inner64(x: Factors, y: Factors) -> float:
    """``<X, Y>_F`` of float64 factors: ``sum((B_x^T B_y) * (A_x A_y^T))``, O((out + in) r_x r_y)."""
    if not (x.rank and y.rank):
        return 0.0
    return float(((x.B.T @ y.B) * (x.A @ y.A.T)).sum())


@dataclass(frozen=True)
class Gram:
    """The float64 Gram matrices ``B^T B`` and ``A A^T`` (R x R) of a factored update.

    ``||B A||_F^2 = sum(BtB * AAt)``; the leading ``[k:, k:]`` blocks give the norm of the
    components ``k..R-1`` (:meth:`tail_norm`) for every prefix k from one pair of products.
    """

    BtB: torch.Tensor
    AAt: torch.Tensor

    @classmethod
    def of(cls, f: Factors) -> Gram:
        f = _f64(f)
        return cls(BtB=f.B.T @ f.B, AAt=f.A @ f.A.T)

    def tail_sq(self, k: int = 0) -> float:
        """``||B[:, k:] A[k:]||_F^2`` (0 for ``k >= R``)."""
        return max(float((self.BtB[k:, k:] * self.AAt[k:, k:]).sum()), 0.0)

    def norm(self) -> float:
        return math.sqrt(self.tail_sq(0))

    def tail_norm(self, k: int) -> float:
        return math.sqrt(self.tail_sq(k))


def frobenius_norm(f: Factors) -> float:
    """``||B A||_F`` from the float64 Gram matrices (no QR)."""
    return Gram.of(f).norm()


def tail_norm(f: Factors, k: int) -> float:
    """``||B A - B[:, :k] A[:k]||_F``: what keeping only the first ``k`` components leaves out.

    Strategies that hand a rank-k client the leading slots of a wider global (HetLoRA, FFA-LoRA)
    report this, relative to ``frobenius_norm(f)``, as the cost of that truncation (through
    :class:`Gram`, which gives every prefix from one pair of Gram matrices).
    """
    if k >= f.rank:
        return 0.0
    return frobenius_norm(Factors(B=f.B[:, k:], A=f.A[k:]))


def difference(x: Factors, y: Factors) -> Factors:
    """``X - Y`` in factored form."""
    return Factors(B=torch.cat([x.B, -y.B], dim=1), A=torch.cat([x.A, y.A], dim=0))


def empty(out: int, inn: int, like: torch.Tensor) -> Factors:
    """The rank-0 (zero) update of an out x in module, in ``like``'s dtype and device."""
    return Factors(B=like.new_zeros(out, 0), A=like.new_zeros(0, inn))


@dataclass(frozen=True)
class Truncation:
    """A rank-k truncation and the share of the squared Frobenius norm (energy) it keeps.

    ``discarded`` is the Frobenius norm of what was dropped, ``||B A - truncation||_F``: summed
    over rounds it bounds how far a repeatedly compressed update drifts (triangle inequality).
    """

    factors: Factors
    energy_kept: float
    discarded: float = 0.0
    singular_values: torch.Tensor | None = None
    core: CoreSVD | None = None  # set by truncate(): the decomposition of the truncated input


def keep_count(s: torch.Tensor, rank: int = 0, energy: float = 0.0) -> int:
    """How many leading singular values to keep; may be 0 (an all-zero update keeps nothing).

    Components below ``1e-12 * max(s)`` are numerically zero and never kept. ``rank`` caps the
    count; ``energy`` in (0, 1] picks the fewest components keeping that share of ``sum(s^2)``.
    """
    if not s.numel() or float(s.max()) <= 0:
        return 0
    k = int((s > s.max() * 1e-12).sum())
    total = float((s**2).sum())
    if energy > 0 and total > 0:
        cum = torch.cumsum(s**2, dim=0) / total
        k = min(k, int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12)) + 1)
    if rank > 0:
        k = min(k, rank)
    return k


def split_svd(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int) -> Truncation:
    """The first ``k`` components of ``U diag(S) Vh`` split evenly as ``U sqrt(S), sqrt(S) Vh``.

    The even split keeps both factors at the same scale, so a client warm-started from them
    trains A and B at comparable learning-rate sensitivity. ``singular_values`` are those kept.
    """
    total = float((s**2).sum())
    kept_sq = float((s[:k] ** 2).sum())
    root = s[:k].sqrt()
    return Truncation(
        Factors(B=u[:, :k] * root, A=root[:, None] * vh[:k]),
        energy_kept=kept_sq / total if total > 0 else 1.0,
        discarded=float((s[k:] ** 2).sum()) ** 0.5,  # from the tail: total - kept would cancel
        singular_values=s[:k].clone(),
    )


def _householder(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``geqrf`` of a tall (or wide) matrix: its packed reflectors, their taus and the R factor."""
    a, tau = torch.geqrf(x)
    return a, tau, torch.triu(a[: min(x.shape)])


def _apply_q(a: torch.Tensor, tau: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``Q @ small`` for the thin Q of ``geqrf`` (``small``: min(m, R) x k), without forming Q."""
    other = small.new_zeros(a.shape[0], small.shape[1])
    other[: small.shape[0]] = small
    return torch.ormqr(a, tau, other)


@dataclass(frozen=True)
class CoreSVD:
    """``B A = Q_b (U diag(S) Vh) Q_a^T``: Householder QRs of both factors and the SVD of their core.

    The Q's stay as packed reflectors (``geqrf``): only the ``k`` columns a truncation keeps are ever
    lifted (``ormqr``), so cutting a rank-R stack to k < R never forms the out x R Q. ``R_b``/``R_a``
    are kept (``core = R_b R_a^T``) so the norm of any block of the rank axis comes from the
    decomposition already made (:meth:`block_norm`), e.g. one summand of a stack.
    """

    qr_b: tuple[torch.Tensor, torch.Tensor]  # geqrf(B): reflectors, taus
    r_b: torch.Tensor  # min(out, R) x R
    qr_a: tuple[torch.Tensor, torch.Tensor]  # geqrf(A^T)
    r_a: torch.Tensor  # min(in, R) x R
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    @classmethod
    def of(cls, f: Factors) -> CoreSVD:
        a_b, tau_b, r_b = _householder(f.B)
        a_a, tau_a, r_a = _householder(f.A.transpose(0, 1))
        u, s, vh = torch.linalg.svd(r_b @ r_a.transpose(0, 1), full_matrices=False)
        return cls((a_b, tau_b), r_b, (a_a, tau_a), r_a, u, s, vh)

    def vectors(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_b U[:, :k], Vh[:k] Q_a^T)``: the first k singular vectors of ``B A``, out x k and k x in."""
        v = _apply_q(*self.qr_a, self.vh[:k].transpose(0, 1))
        return _apply_q(*self.qr_b, self.u[:, :k]), v.transpose(0, 1)

    def lift(self, k: int) -> Truncation:
        """The first ``k`` components, lifted back to out x k and k x in and split evenly."""
        u, vh = self.vectors(k)
        return split_svd(u, self.s, vh, k)

    def residual(self, k: int) -> tuple[float, float]:
        """``(||U_k S_k Vh_k - C||_F, ||C||_F)`` in float64, with ``C = R_b R_a^T`` the core.

        With Q_b, Q_a orthonormal this is ``(||lift(k) - B A||_F, ||B A||_F)``: the relative gap of
        the rank-k truncation to the factored input, checked against the core itself (the SVD's
        round-off and any dropped component) at O(R^3) cost instead of a Gram of out x 2R factors.
        """
        c = self.r_b.double() @ self.r_a.double().T
        approx = (self.u[:, :k].double() * self.s[:k].double()) @ self.vh[:k].double()
        return float(torch.linalg.matrix_norm(approx - c)), float(torch.linalg.matrix_norm(c))

    def block_norm(self, start: int, stop: int) -> float:
        """``||B[:, start:stop] A[start:stop]||_F`` from ``R_b``/``R_a`` (the Q's are orthonormal)."""
        part = self.r_b[:, start:stop].double() @ self.r_a[:, start:stop].double().T
        return float(torch.linalg.matrix_norm(part))


def svd(f: Factors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of the product, ``B A = U diag(S) Vh``, from the SVD of the core."""
    c = CoreSVD.of(f)
    u, vh = c.vectors(c.s.numel())
    return u, c.s, vh


def truncate(f: Factors, rank: int = 0, energy: float = 0.0) -> Truncation:
    """Best rank-k approximation (Eckart-Young) of ``B A``, split evenly as ``U sqrt(S), sqrt(S) Vh``.

    ``rank`` caps k; ``energy`` in (0, 1] picks the smallest k keeping that share of the energy;
    with both, the smaller k wins. With neither, all nonzero components are kept. At least one
    component is kept (a zero one for a zero update) so the result stays a loadable adapter.
    The decomposition rides along as ``core`` (norms of parts of ``f`` without a new one).
    """
    c = CoreSVD.of(f)
    k = max(keep_count(c.s, rank, energy), 1) if c.s.numel() else 0
    # only the kept columns are lifted back to out x k and k x in (the big products of svd())
    return dataclasses.replace(c.lift(k), core=c)


def compress(f: Factors, rank: int = 0, energy: float = 0.0) -> Truncation:
    """``truncate`` only when it can drop something: a cap below the rank, or an energy target.

    Without either (or under the cap) the factors are returned untouched (exact, no SVD), with
    ``energy_kept`` 1.0; this is what keeps stacking strategies exact up to their declared cap.
    """
    if not (energy > 0 or (rank > 0 and f.rank > rank)):
        return Truncation(f, energy_kept=1.0)
    return truncate(f, rank=rank, energy=energy)


def relative_error(approx: Factors, exact: Factors) -> tuple[float, float]:
    """``(||approx - exact||_F, ||exact||_F)``; their ratio is the relative Frobenius error.

    From float64 Gram products, ``||X - Y||^2 = ||X||^2 + ||Y||^2 - 2 <X, Y>`` (the Gram form of the
    stacked difference ``[B_x, -B_y] [A_x; A_y]``), clamped at 0: no QR, O((out + in) (r_x + r_y)^2).
    """
    x, y = _f64(approx), _f64(exact)
    xx, yy, xy = _inner64(x, x), _inner64(y, y), _inner64(x, y)
    return math.sqrt(max(xx + yy - 2.0 * xy, 0.0)), math.sqrt(max(yy, 0.0))
