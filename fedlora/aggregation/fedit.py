"""FedIT: weighted mean of A and, separately, of B (Zhang et al., "Towards Building the
Federated GPT: Federated Instruction Tuning", arXiv:2305.05644).

This is what FedAvg does to a LoRA state. It is not exact: ``mean(B) mean(A) != mean(B A)``
(the aggregation discordance studied by FFA-LoRA, arXiv:2403.12313, and FLoRA, arXiv:2409.05976),
so every round reports its relative gap to the oracle ``sum_k p_k s_k B_k A_k``. FedIT is defined
for one rank and one alpha shared by all clients; mixed ranks are refused.

rsLoRA: the global factors are loaded with the run's scaling (``alpha / sqrt(r)``), the same one
every client trains with, so nothing else changes. DoRA is supported: all clients share one rank
and one parameterisation, so averaging every DoRA parameter, the magnitude vectors included
(weights p_k), is exactly what FedAvg does to the model's trainable parameters; it is as inexact
as the factor mean (the reported gap covers the ``s B A`` part only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.aggregation.base import (
    Aggregator,
    ClientSpec,
    ClientUpdate,
    GlobalAdapter,
    client_weights,
    gap_to_oracle,
    mean_extras,
    modules_of,
    weighted_mean,
)
from fedlora.aggregation.registry import register
from fedlora.aggregation.variants import lora_scaling
from fedlora.lora.factored import Factors
from fedlora.lora.keys import LoraState, a_key, b_key, uniform_rank
from fedlora.privacy.mechanism import gaussian_like


@register
class FedIT(Aggregator):
    """Weighted mean of each LoRA factor (and of any trainable head)."""

    name = "fedit"
    exact = False
    accepts_mixed_ranks = False

    def init_state(self, initial: GlobalAdapter) -> None:
        self.check_initial(initial)
        self._rank = initial.rank
        self._state = _copy(initial.state)

    def payload(self, spec: ClientSpec) -> LoraState:
        if spec.rank != self._rank:
            raise ValueError(
                f"fedit needs every client at rank {self._rank}; client {spec.client_id} has rank "
                f"{spec.rank} (use ffa, flora, flexlora or hetlora for mixed ranks)"
            )
        return _copy(self._state)

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        ranks = {u.spec.rank for u in updates} | {self._rank}
        if len(ranks) != 1:
            raise ValueError(f"fedit received mixed ranks {sorted(ranks)}")
        p = client_weights(updates)
        new: LoraState = mean_extras(updates, p)
        result: dict[str, Factors] = {}
        scaling = lora_scaling(self.alpha, self._rank, self.use_rslora)
        for module in modules_of(updates[0].state):
            A = weighted_mean([u.state[a_key(module)] for u in updates], p)
            B = weighted_mean([u.state[b_key(module)] for u in updates], p)
            new[a_key(module)], new[b_key(module)] = A, B
            result[module] = Factors(B=scaling * B, A=A)
        self._state = new
        return gap_to_oracle(updates, p, result)

    def add_dp_noise(self, updates: Sequence[ClientUpdate], std: float, generator: torch.Generator) -> None:
        """Every averaged tensor (A, B, any head or magnitudes) gets ``N(0, std^2)``: noise on both
        factors, which the product ``B A`` multiplies (the effect FFA-LoRA avoids by freezing A)."""
        self._state = {k: v + gaussian_like(v, std, generator) for k, v in self._state.items()}

    def global_adapter(self) -> GlobalAdapter:
        return GlobalAdapter(state=_copy(self._state), rank=self._rank, alpha=self.alpha,
                             use_rslora=self.use_rslora, use_dora=self.use_dora)

    def state_dict(self) -> LoraState:
        return _copy(self._state)

    def load_state_dict(self, state: LoraState) -> None:
        """Restore from :meth:`state_dict`; needs no prior :meth:`init_state`."""
        self._rank = uniform_rank(state)
        self._state = _copy(state)


def _copy(state: LoraState) -> LoraState:
    """Tensor copies: a caller writing to a payload, an adapter or a checkpoint (or the dict it
    loaded from) must never reach the global state."""
    return {k: v.clone() for k, v in state.items()}
