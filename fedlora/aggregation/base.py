"""The interface every aggregation strategy implements, and the maths they share.

An :class:`Aggregator` owns the server's global state between rounds. Each round it answers
three questions: what does this client receive (:meth:`Aggregator.payload`), how do the replies
combine (:meth:`Aggregator.aggregate`), and what adapter represents the global model now
(:meth:`Aggregator.global_adapter`, used for central evaluation and export). No Flower, PEFT or
I/O here: inputs are plain tensors, and inputs are never mutated.

The oracle of DESIGN.md section 3, ``dW* = sum_k p_k s_k B_k A_k``, is built by
:func:`oracle_factors` in factored form so any strategy can report its gap to it. ``s_k`` is the
client's real PEFT scaling (``variants.lora_scaling``): ``alpha / r_k``, or ``alpha / sqrt(r_k)``
with rsLoRA (``lora.use_rslora``), so rsLoRA runs are exact wherever plain ones are.

DoRA (``lora.use_dora``): each module's magnitude vector travels with the extras and is averaged
with the same weights p_k (:func:`mean_extras`). The oracle and ``agg-rel-error`` still measure
the LoRA part ``s B A`` (the direction's update); how the averaged magnitudes combine with it
depends on the base weights, which an aggregator never sees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedlora.aggregation.variants import lora_scaling, magnitude_problem
from fedlora.lora.factored import Factors, relative_error, stack
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules


@dataclass(frozen=True)
class ClientSpec:
    """What the server knows about a client before it trains: its LoRA rank and alpha, and whether
    its PEFT adapter uses rsLoRA scaling (``lora.use_rslora``, the same for every client)."""

    client_id: str
    rank: int
    alpha: float
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """``s_k``: the scaling the client's PEFT adapter applies to ``B_k A_k``."""
        return lora_scaling(self.alpha, self.rank, self.use_rslora)


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted client reply: its trained adapter state and its weight count n_k
    (see :func:`client_weights` for what n_k counts)."""

    spec: ClientSpec
    state: LoraState
    num_examples: int


@dataclass(frozen=True)
class GlobalAdapter:
    """An adapter that represents the global model: state plus the rank/alpha to load it with.

    ``rank_pattern``/``alpha_pattern`` use PEFT's vocabulary: per-module overrides of ``rank`` and
    ``alpha``, keyed by the module names of ``state`` (``lora_modules(state)``). Strategies whose
    global update is factored with the scaling folded in (flora, flexlora) give every module the
    alpha of scaling 1 (``variants.folded_alpha``: ``alpha == rank``, or ``sqrt(rank)`` with
    rsLoRA), so ``B @ A`` of the state is the update itself. ``use_rslora``/``use_dora`` are the run's
    ``lora.use_rslora``/``lora.use_dora``: the adapter is loaded (and exported) with them, and with
    DoRA ``state`` holds every module's ``lora_magnitude_vector``.
    """

    state: LoraState
    rank: int
    alpha: float
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False

    def module_rank(self, module: str) -> int:
        return self.rank_pattern.get(module, self.rank)

    def module_scaling(self, module: str) -> float:
        alpha = self.alpha_pattern.get(module, self.alpha)
        return lora_scaling(alpha, self.module_rank(module), self.use_rslora)

    def factors(self) -> dict[str, Factors]:
        """The update of every LoRA module as factors with the scaling folded into B."""
        pairs = lora_modules(self.state)
        return {m: Factors(B=self.module_scaling(m) * pair.B, A=pair.A) for m, pair in pairs.items()}


class Aggregator(ABC):
    """Base class of a named aggregation strategy (see :mod:`fedlora.aggregation`)."""

    name: ClassVar[str]
    exact: ClassVar[bool]
    accepts_mixed_ranks: ClassVar[bool]
    freeze_a: ClassVar[bool] = False
    """True (ffa): clients regenerate A from ``lora.init_seed``, keep it frozen and upload only B."""
    refuses_dora: ClassVar[str] = ""
    """Why this strategy cannot aggregate DoRA adapters (``lora.use_dora``); empty when it can."""
    refuses_dp: ClassVar[str] = ""
    """Why this strategy cannot run under differential privacy (``privacy.mode``); empty when it can."""

    def __init__(
        self, *, alpha: float, norm_weighted: bool = False, rank_cap: int = 0, energy: float = 0.0,
        init_seed: int | None = None, use_rslora: bool = False, use_dora: bool = False,
    ):
        if use_dora and self.refuses_dora:
            raise ValueError(f"lora.use_dora: strategy {self.name!r} does not support DoRA: "
                             f"{self.refuses_dora}")
        self.alpha = alpha
        self.norm_weighted = norm_weighted
        self.rank_cap = rank_cap
        self.energy = energy
        self.init_seed = init_seed  # lora.init_seed, for strategies that draw fresh adapters
        self.use_rslora = use_rslora  # lora.use_rslora: the global adapter's scaling is alpha / sqrt(r)
        self.use_dora = use_dora  # lora.use_dora: magnitudes travel with the extras

    def check_initial(self, initial: GlobalAdapter) -> None:
        """Refuse an initial adapter built for another LoRA variant than this aggregator's.

        Every ``init_state`` calls it first. With DoRA every module needs its magnitude vector
        (``||W0||_col``, which only the base model gives: see :mod:`fedlora.lora.init`).
        """
        for flag in ("use_rslora", "use_dora"):
            if getattr(initial, flag) != getattr(self, flag):
                raise ValueError(f"{self.name}: the initial adapter has {flag}={getattr(initial, flag)} but "
                                 f"the aggregator was built with {flag}={getattr(self, flag)} (lora.{flag})")
        if problem := magnitude_problem(initial.state, self.use_dora):
            raise ValueError(f"{self.name}: the initial adapter does not fit: {problem}")

    @abstractmethod
    def init_state(self, initial: GlobalAdapter) -> None:
        """Set the global state before round 1 from the initial adapter."""

    def begin_round(self, server_round: int) -> None:  # noqa: B027  (optional hook)
        """Called before the payloads of ``server_round`` are built (e.g. to seed fresh adapters)."""

    @abstractmethod
    def payload(self, spec: ClientSpec) -> LoraState:
        """The trainable adapter state client ``spec`` starts its local training from.

        PEFT keys at the client's rank ``spec.rank`` (plus any trainable head). With
        ``freeze_a`` the A factors are left out: the client regenerates them from the seed.
        """

    def frozen(self, spec: ClientSpec) -> LoraState | None:
        """A second adapter the client applies frozen under its trainable one, or None.

        Scaling folded in (the client loads it with ``alpha == rank`` per module), so its
        ``B @ A`` is added to the base weights' output as is. Module ranks may differ.
        """
        return None

    def reply_template(self, spec: ClientSpec, payload: LoraState) -> LoraState:
        """Keys and shapes a reply from ``spec`` must have; by default those of its payload."""
        return payload

    def payload_metrics(self) -> dict[str, float]:
        """Metrics about the payloads built since :meth:`begin_round` (e.g. truncation energy)."""
        return {}

    @abstractmethod
    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """Combine this round's accepted updates into the global state; return round metrics."""

    def dp_b_weight(self, spec: ClientSpec) -> float:
        """How much a unit of the client's PEFT B counts in the space this strategy averages
        (1; ``s_k`` where B is folded with the client's scaling): see :mod:`fedlora.privacy.mechanism`."""
        return 1.0

    def add_dp_noise(self, updates: Sequence[ClientUpdate], std: float, generator: torch.Generator) -> None:
        """Central DP: add ``N(0, std^2)`` to every global entry that :meth:`aggregate` just averaged
        over ``updates`` (clipped, equally weighted). Linear strategies implement it."""
        raise NotImplementedError(f"{self.name}: {self.refuses_dp or 'no central DP noise rule'}")

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
    """``p_k = n_k / sum(n)`` with ``n_k = updates[k].num_examples``.

    What n_k counts is the server's choice (``federation.weighting``, applied by the Flower
    strategy before the updates reach an aggregator): the node's local dataset size reported at
    discovery (``dataset``, the default and FedAvg's rule), the examples its validated reply says
    it saw this round (``examples``), or 1 for every client (``uniform``). Aggregators only see
    the resulting counts.

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


def check_rank(name: str, spec: ClientSpec, max_rank: int, why: str = "") -> None:
    """Refuse a client whose rank is outside ``1..max_rank`` (the global state's width)."""
    if not 0 < spec.rank <= max_rank:
        raise ValueError(f"{name}: client {spec.client_id} rank {spec.rank} is outside 1..{max_rank}{why}")


def unfolded(
    G: Mapping[str, Factors], extras: LoraState, rank: int, alpha: float, use_rslora: bool = False,
    use_dora: bool = False,
) -> GlobalAdapter:
    """A rank-``rank`` PEFT adapter whose update is G (scaling folded into B): B divided by
    PEFT's scaling (``lora_scaling``), A as is, plus copies of the extra tensors (a head,
    DoRA magnitudes)."""
    scaling = lora_scaling(alpha, rank, use_rslora)
    state: LoraState = {}
    for m, g in G.items():
        state[a_key(m)], state[b_key(m)] = g.A.clone(), g.B / scaling
    state.update({k: v.clone() for k, v in extras.items()})
    return GlobalAdapter(state=state, rank=rank, alpha=alpha, use_rslora=use_rslora, use_dora=use_dora)


def section(state: LoraState, prefix: str) -> LoraState:
    """The entries of a checkpoint written under ``prefix`` (e.g. ``"extra."``), prefix removed, copied."""
    return {k.removeprefix(prefix): v.clone() for k, v in state.items() if k.startswith(prefix)}


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k t_k`` for equally shaped tensors (weights already normalised)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out = out + w * t
    return out


def mean_extras(updates: Sequence[ClientUpdate], weights: Sequence[float]) -> LoraState:
    """Weighted mean of the non-factor tensors shared by all updates: a classifier head, and DoRA's
    magnitude vectors (``sum_k p_k m_k``, with the weights p_k of the factors)."""
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
    ``agg-rel-error-max`` (the worst single module). The norms come from float64 Gram products of
    the factors (:func:`~fedlora.lora.factored.relative_error`): no QR of the stacked difference.
    """
    return gap_metrics(relative_error(approx, oracle_factors(updates, weights, module))
                       for module, approx in result.items())


def gap_metrics(gaps: Iterable[tuple[float, float]]) -> dict[str, float]:
    """``agg-rel-error``/``agg-rel-error-max`` from per-module ``(||D_m||_F, ||X_m||_F)`` pairs."""
    diff_sq = exact_sq = 0.0
    worst = 0.0
    for diff, exact in gaps:
        diff_sq += diff**2
        exact_sq += exact**2
        worst = max(worst, diff / exact if exact > 0 else diff)
    overall = (diff_sq / exact_sq) ** 0.5 if exact_sq > 0 else diff_sq**0.5
    return {"agg-rel-error": overall, "agg-rel-error-max": worst}


def modules_of(state: LoraState) -> list[str]:
    """Sorted LoRA module names of a state."""
    return list(lora_modules(state))
