"""Linear algebra on factored updates ``B @ A`` that never forms the out x in matrix.

A server aggregating adapters for a 4096 x 4096 projection must not materialise it. Norms,
differences and truncations of a product ``B A`` (B: out x R, A: R x in) reduce to the small
R x R core of two thin QR decompositions: with ``B = Q_b R_b`` and ``A^T = Q_a R_a``,
``B A = Q_b (R_b R_a^T) Q_a^T``, so ``||B A||_F = ||R_b R_a^T||_F`` and the SVD of the core
gives the SVD of the product. Cost O((out + in) R^2) instead of O(out * in * R).
"""

from __future__ import annotations

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


def frobenius_norm(f: Factors) -> float:
    """``||B A||_F`` from the R x R core."""
    _, c, _ = core(f)
    return float(torch.linalg.matrix_norm(c, ord="fro"))


def tail_norm(f: Factors, k: int) -> float:
    """``||B A - B[:, :k] A[:k]||_F``: what keeping only the first ``k`` components leaves out.

    Strategies that hand a rank-k client the leading slots of a wider global (HetLoRA, FFA-LoRA)
    report this, relative to ``frobenius_norm(f)``, as the cost of that truncation.
    """
    if k >= f.rank:
        return 0.0
    return frobenius_norm(Factors(B=f.B[:, k:], A=f.A[k:]))


def difference(x: Factors, y: Factors) -> Factors:
    """``X - Y`` in factored form."""
    return Factors(B=torch.cat([x.B, -y.B], dim=1), A=torch.cat([x.A, y.A], dim=0))


def svd(f: Factors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of the product, ``B A = U diag(S) Vh``, from the SVD of the core."""
    q_b, c, q_a = core(f)
    u_c, s, vh_c = torch.linalg.svd(c, full_matrices=False)
    return q_b @ u_c, s, vh_c @ q_a.transpose(0, 1)


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


def truncate(f: Factors, rank: int = 0, energy: float = 0.0) -> Truncation:
    """Best rank-k approximation (Eckart-Young) of ``B A``, split evenly as ``U sqrt(S), sqrt(S) Vh``.

    ``rank`` caps k; ``energy`` in (0, 1] picks the smallest k keeping that share of the energy;
    with both, the smaller k wins. With neither, all nonzero components are kept. At least one
    component is kept (a zero one for a zero update) so the result stays a loadable adapter.
    """
    q_b, c, q_a = core(f)
    u_c, s, vh_c = torch.linalg.svd(c, full_matrices=False)
    k = max(keep_count(s, rank, energy), 1) if s.numel() else 0
    # only the kept columns are lifted back to out x k and k x in (the big products of svd())
    return split_svd(q_b @ u_c[:, :k], s, vh_c[:k] @ q_a.transpose(0, 1), k)


def compress(f: Factors, rank: int = 0, energy: float = 0.0) -> Truncation:
    """``truncate`` only when it can drop something: a cap below the rank, or an energy target.

    Without either (or under the cap) the factors are returned untouched (exact, no SVD), with
    ``energy_kept`` 1.0; this is what keeps stacking strategies exact up to their declared cap.
    """
    if not (energy > 0 or (rank > 0 and f.rank > rank)):
        return Truncation(f, energy_kept=1.0)
    return truncate(f, rank=rank, energy=energy)


def relative_error(approx: Factors, exact: Factors) -> tuple[float, float]:
    """``(||approx - exact||_F, ||exact||_F)``; their ratio is the relative Frobenius error."""
    return frobenius_norm(difference(approx, exact)), frobenius_norm(exact)
