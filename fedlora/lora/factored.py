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


def difference(x: Factors, y: Factors) -> Factors:
    """``X - Y`` in factored form."""
    return Factors(B=torch.cat([x.B, -y.B], dim=1), A=torch.cat([x.A, y.A], dim=0))


def svd(f: Factors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of the product, ``B A = U diag(S) Vh``, from the SVD of the core."""
    q_b, c, q_a = core(f)
    u_c, s, vh_c = torch.linalg.svd(c, full_matrices=False)
    return q_b @ u_c, s, vh_c @ q_a.transpose(0, 1)


@dataclass(frozen=True)
class Truncation:
    """A rank-k truncation and the share of the squared Frobenius norm (energy) it keeps."""

    factors: Factors
    energy_kept: float


def truncate(f: Factors, rank: int = 0, energy: float = 0.0) -> Truncation:
    """Best rank-k approximation (Eckart-Young) of ``B A``, split evenly as ``U sqrt(S), sqrt(S) Vh``.

    ``rank`` caps k; ``energy`` in (0, 1] picks the smallest k keeping that share of the energy;
    with both, the smaller k wins. With neither, all nonzero components are kept.
    """
    u, s, vh = svd(f)
    total = float((s**2).sum())
    k = int((s > s.max() * 1e-12).sum()) if s.numel() and float(s.max()) > 0 else 0
    if energy > 0 and total > 0:
        cum = torch.cumsum(s**2, dim=0) / total
        k = min(k, int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12)) + 1)
    if rank > 0:
        k = min(k, rank)
    k = max(k, 1) if s.numel() else 0
    root = s[:k].sqrt()
    kept = float((s[:k] ** 2).sum()) / total if total > 0 else 1.0
    return Truncation(Factors(B=u[:, :k] * root, A=root[:, None] * vh[:k]), energy_kept=kept)


def relative_error(approx: Factors, exact: Factors) -> tuple[float, float]:
    """``(||approx - exact||_F, ||exact||_F)``; their ratio is the relative Frobenius error."""
    return frobenius_norm(difference(approx, exact)), frobenius_norm(exact)
