"""What sending a client only the first r components of the global factors leaves out.

Used by the strategies whose payload is a plain prefix of the global factors (``ffa``, ``hetlora``)
and, for its metric names, by ``flexlora``'s truncated SVD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedlora.lora.factored import Factors, Gram


class PrefixTruncation:
    """What sending a client only the first r components of the global factors leaves out.

    For strategies whose payload is a plain prefix of G (``ffa``, ``hetlora``): every
    :meth:`record` appends, per module, ``||G - G[:r]|| / ||G||`` (0 while G is zero), and
    :meth:`metrics` reports them as ``trunc-rel-error-max``/``-mean``. The float64 Gram matrices of
    G (:class:`~fedlora.lora.factored.Gram`) are formed once per global state, and give ``||G||`` and
    every prefix's tail ``||G - G[:r]||`` without a QR: call :meth:`global_changed` whenever G changes.
    """

    def __init__(self) -> None:
        self._grams: dict[str, Gram] | None = None
        self._errors: list[float] = []

    def begin_round(self) -> None:
        self._errors = []

    def global_changed(self) -> None:
        self._grams = None

    def record(self, G: Mapping[str, Factors], rank: int) -> None:
        if self._grams is None:
            self._grams = {m: Gram.of(g) for m, g in G.items()}
        for m in G:
            gram = self._grams[m]
            total = gram.tail_sq(0)
            self._errors.append((gram.tail_sq(rank) / total) ** 0.5 if total > 0 else 0.0)

    def metrics(self) -> dict[str, float]:
        return truncation_metrics(self._errors)


def truncation_metrics(errors: Sequence[float]) -> dict[str, float]:
    """``trunc-rel-error-max``/``-mean`` of the relative errors of this round's payload truncations."""
    if not errors:
        return {}
    return {"trunc-rel-error-max": max(errors), "trunc-rel-error-mean": sum(errors) / len(errors)}
