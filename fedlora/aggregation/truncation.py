"""What sending a client only the first r components of the global factors leaves out.

Used by the strategies whose payload is a plain prefix of the global factors (``ffa``, ``hetlora``)
and, for its metric names, by ``flexlora``'s truncated SVD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedlora.lora.factored import Factors, frobenius_norm, tail_norm


class PrefixTruncation:
    """What sending a client only the first r components of the global factors leaves out.

    For strategies whose payload is a plain prefix of G (``ffa``, ``hetlora``): every
    :meth:`record` appends, per module, ``||G - G[:r]|| / ||G||`` (0 while G is zero), and
    :meth:`metrics` reports them as ``trunc-rel-error-max``/``-mean``. The norms of G are computed
    once per global state: call :meth:`global_changed` whenever G changes.
    """

    def __init__(self) -> None:
        self._norms: dict[str, float] | None = None
        self._errors: list[float] = []

    def begin_round(self) -> None:
        self._errors = []

    def global_changed(self) -> None:
        self._norms = None

    def record(self, G: Mapping[str, Factors], rank: int) -> None:
        if self._norms is None:
            self._norms = {m: frobenius_norm(g) for m, g in G.items()}
        for m, g in G.items():
            total = self._norms[m]
            self._errors.append(tail_norm(g, rank) / total if total > 0 else 0.0)

    def metrics(self) -> dict[str, float]:
        return truncation_metrics(self._errors)


def truncation_metrics(errors: Sequence[float]) -> dict[str, float]:
    """``trunc-rel-error-max``/``-mean`` of the relative errors of this round's payload truncations."""
    if not errors:
        return {}
    return {"trunc-rel-error-max": max(errors), "trunc-rel-error-mean": sum(errors) / len(errors)}
