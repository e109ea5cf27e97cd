"""The interface every aggregation strategy implements, and the maths they share.

An :class:`Aggregator` owns the server's global state between rounds. Each round it answers
three questions: what does this client receive (:meth:`Aggregator.payload`), how do the replies
combine (:meth:`Aggregator.aggregate`), and what adapter represents the global model now
(:meth:`Aggregator.global_adapter`, used for central evaluation and export). No Flower, PEFT or
I/O here: inputs are plain tensors, and inputs are never mutated.

The oracle of DESIGN.md section 3, ``dW* = sum_k p_k s_k B_k A_k``, is built by
:func:`oracle_factors` in factored form so any strategy can report its gap to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedlora.lora.factored import Factors, relative_error, stack
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules


@dataclass(frozen=True)
class ClientSpec:
    """What the server knows about a client before it trains: its LoRA rank and alpha."""

    client_id: str
    rank: int
    alpha: float

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted client reply: its trained adapter state and how many examples it saw."""

    spec: ClientSpec
    state: LoraState
    num_examples: int


@dataclass(frozen=True)
class GlobalAdapter:
    """An adapter that represents the global model: state plus the rank/alpha to load it with."""

    state: LoraState
    rank: int
    alpha: float


class Aggregator(ABC):
    """Base class of a named aggregation strategy (see :mod:`fedlora.aggregation`)."""

    name: ClassVar[str]
    exact: ClassVar[bool]
    accepts_mixed_ranks: ClassVar[bool]

    def __init__(self, *, alpha: float, norm_weighted: bool = False, rank_cap: int = 0, energy: float = 0.0):
        self.alpha = alpha
        self.norm_weighted = norm_weighted
        self.rank_cap = rank_cap
        self.energy = energy

    @abstractmethod
    def init_state(self, initial: GlobalAdapter) -> None:
        """Set the global state before round 1 from the initial adapter."""

    @abstractmethod
    def payload(self, spec: ClientSpec) -> LoraState:
        """The adapter state client ``spec`` starts its local training from."""

    def reply_template(self, spec: ClientSpec, payload: LoraState) -> LoraState:
        """Keys and shapes a reply from ``spec`` must have; by default those of its payload."""
        return payload

    @abstractmethod
    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """Combine this round's accepted updates into the global state; return round metrics."""

    @abstractmethod
    def global_adapter(self) -> GlobalAdapter:
        """The current global model as a loadable adapter."""

    @abstractmethod
    def state_dict(self) -> LoraState:
        """Tensors that fully describe the global state (for checkpoints)."""

    @abstractmethod
    def load_state_dict(self, state: LoraState) -> None:
        """Restore the global state written by :meth:`state_dict`."""


def client_weights(updates: Sequence[ClientUpdate]) -> list[float]:
    """``p_k = n_k / sum(n)``.

    Raises
    ------
    ValueError
        If there are no updates or a count is not positive.
    """
    if not updates:
        raise ValueError("cannot aggregate an empty round")
    counts = [u.num_examples for u in updates]
    if any(n <= 0 for n in counts):
        raise ValueError(f"every update needs a positive example count, got {counts}")
    total = float(sum(counts))
    return [n / total for n in counts]


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k t_k`` for equally shaped tensors (weights already normalised)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out = out + w * t
    return out


def mean_extras(updates: Sequence[ClientUpdate], weights: Sequence[float]) -> LoraState:
    """Weighted mean of the non-LoRA tensors (e.g. a classifier head) shared by all updates."""
    keys = extra_keys(updates[0].state)
    return {k: weighted_mean([u.state[k] for u in updates], weights) for k in keys}


def oracle_factors(updates: Sequence[ClientUpdate], weights: Sequence[float], module: str) -> Factors:
    """The exact round update ``sum_k p_k s_k B_k A_k`` of one module, factored."""
    parts = [
        Factors(B=u.spec.scaling * u.state[b_key(module)], A=u.state[a_key(module)]) for u in updates
    ]
    return stack(parts, weights)


def gap_to_oracle(
    updates: Sequence[ClientUpdate], weights: Sequence[float], result: dict[str, Factors]
) -> dict[str, float]:
    """Relative Frobenius gap of a strategy's per-module result to the oracle.

    Returns ``agg-rel-error`` (over all modules: sqrt(sum ||D_m||^2 / sum ||X_m||^2)) and
    ``agg-rel-error-max`` (the worst single module).
    """
    diff_sq = exact_sq = 0.0
    worst = 0.0
    for module, approx in result.items():
        diff, exact = relative_error(approx, oracle_factors(updates, weights, module))
        diff_sq += diff**2
        exact_sq += exact**2
        worst = max(worst, diff / exact if exact > 0 else diff)
    overall = (diff_sq / exact_sq) ** 0.5 if exact_sq > 0 else diff_sq**0.5
    return {"agg-rel-error": overall, "agg-rel-error-max": worst}


def modules_of(state: LoraState) -> list[str]:
    """Sorted LoRA module names of a state."""
    return list(lora_modules(state))
