"""HetLoRA: zero-pad every client's LoRA to the largest rank and average the factors (Cho et al.,
"Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models", EMNLP 2024,
arXiv:2401.06432).

Aggregation, as in the paper: each client's factors (here with its scaling folded into B, since
ranks and therefore scalings differ) are zero-padded along the rank axis to r_max (B to
``out x r_max``, A to ``r_max x in``) and averaged over *all* clients of the round with one weight
per client: ``p_k`` by default, or, with ``norm_weighted`` (the paper's sparsity-weighted
aggregation), ``p_k * ||s_k B_k A_k||_F`` renormalised, computed per module from the factors.
Averaging over every client (not per slot over the clients that hold it) is the paper's rule,
and it is what dilutes the high slots that only high-rank clients train (the effect
arXiv:2406.17477 measures). One departure: a slot that *no* client of the round holds (partial
participation without any r_max client) keeps its previous global value instead of collapsing
to zero, which would leave both of its factors zero and untrainable for good. Local rank
self-pruning (a client-side option of the paper) is not part of the server.

Not exact: ``mean(B) mean(A) != mean(B A)``; each round reports ``agg-rel-error``, the relative
Frobenius gap of ``B_g A_g`` to the oracle ``sum_k p_k s_k B_k A_k`` (data weights ``p_k`` even
when norm-weighted). A client receives the first r_k components, ``A_g[:r_k]`` and
``B_g[:, :r_k] / s_k``; what the other slots carry is reported by :meth:`HetLoRA.payload_metrics`.
``rank_cap`` and ``energy`` do not apply and are ignored.

rsLoRA: the folding uses each client's ``s_k = alpha / sqrt(r_k)``. DoRA is supported as in
FedIT: every client warm-starts from the global adapter and its magnitude vector (one entry per
output feature, whatever the rank) is averaged with the data weights p_k, also when
``norm_weighted`` reweights the factors (a magnitude has no rank slots to weigh).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedlora.aggregation.base import (
    Aggregator,
    ClientSpec,
    ClientUpdate,
    GlobalAdapter,
    check_rank,
    client_weights,
    gap_to_oracle,
    mean_extras,
    section,
    unfolded,
)
from fedlora.aggregation.registry import register
from fedlora.aggregation.truncation import PrefixTruncation
from fedlora.lora.factored import Factors, frobenius_norm
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules, uniform_rank
from fedlora.privacy.mechanism import gaussian_like


@register
class HetLoRA(Aggregator):
    """Zero-padded weighted mean of the factors at the largest rank; clients take a prefix."""

    name = "hetlora"
    exact = False
    accepts_mixed_ranks = True

    def init_state(self, initial: GlobalAdapter) -> None:
        self.check_initial(initial)
        self._rank = uniform_rank(initial.state)
        pairs = lora_modules(initial.state)
        # scaling folded into B: the update is B_g A_g whatever rank a client trains at
        self._G = {m: Factors(B=initial.module_scaling(m) * p.B, A=p.A.clone()) for m, p in pairs.items()}
        self._extras = {k: initial.state[k].clone() for k in extra_keys(initial.state)}
        self._trunc = PrefixTruncation()

    def begin_round(self, server_round: int) -> None:
        self._trunc.begin_round()

    def payload(self, spec: ClientSpec) -> LoraState:
        check_rank(self.name, spec, self._rank)
        r = spec.rank
        out: LoraState = {}
        for m, g in self._G.items():
            out[a_key(m)] = g.A[:r].clone()
            out[b_key(m)] = g.B[:, :r] / spec.scaling
        out.update({k: v.clone() for k, v in self._extras.items()})
        self._trunc.record(self._G, r)
        return out

    def payload_metrics(self) -> dict[str, float]:
        """Relative Frobenius error of each payload's start update vs the global, per module.

        ``trunc-rel-error-max``/``-mean`` over (payload, module) pairs since :meth:`begin_round`.
        The leading slots are not ordered by energy, so this is a plain prefix, not an optimal
        truncation.
        """
        return self._trunc.metrics()

    def _weights(self, updates: Sequence[ClientUpdate], p: list[float], module: str) -> list[float]:
        """``p_k``, or ``p_k ||s_k B_k A_k||_F`` renormalised (falling back to ``p_k`` if all are zero)."""
        if not self.norm_weighted:
            return p
        raw = [
            pk * frobenius_norm(Factors(B=u.spec.scaling * u.state[b_key(module)], A=u.state[a_key(module)]))
            for pk, u in zip(p, updates, strict=True)
        ]
        total = sum(raw)
        return [w / total for w in raw] if total > 0 else p

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        p = client_weights(updates)
        for u in updates:
            check_rank(self.name, u.spec, self._rank)
        held = max(u.spec.rank for u in updates)  # slots >= held: no client of this round has them
        new_G: dict[str, Factors] = {}
        for m, old in self._G.items():
            w = self._weights(updates, p, m)
            pad = [self._rank - u.spec.rank for u in updates]
            B = torch.stack([wk * u.spec.scaling * F.pad(u.state[b_key(m)], (0, n))
                             for wk, u, n in zip(w, updates, pad, strict=True)]).sum(dim=0)
            A = torch.stack([wk * F.pad(u.state[a_key(m)], (0, 0, 0, n))
                             for wk, u, n in zip(w, updates, pad, strict=True)]).sum(dim=0)
            if held < self._rank:
                B[:, held:] = old.B[:, held:].to(B.dtype)
                A[held:] = old.A[held:].to(A.dtype)
            new_G[m] = Factors(B=B, A=A)
        metrics = gap_to_oracle(updates, p, new_G)
        self._G = new_G
        self._extras = mean_extras(updates, p)
        self._trunc.global_changed()
        return metrics

    def dp_b_weight(self, spec: ClientSpec) -> float:
        return spec.scaling  # B is averaged folded, s_k B_k

    def add_dp_noise(self, updates: Sequence[ClientUpdate], std: float, generator: torch.Generator) -> None:
        """Noise on the slots some client of the round trained, in the folded space the zero-padded
        mean lives in (and on any extras); slots no client held keep their value, as in aggregate."""
        held = max(u.spec.rank for u in updates)
        for m, g in self._G.items():
            B, A = g.B.clone(), g.A.clone()
            B[:, :held] += gaussian_like(B[:, :held], std, generator)
            A[:held] += gaussian_like(A[:held], std, generator)
            self._G[m] = Factors(B=B, A=A)
        self._extras = {k: v + gaussian_like(v, std, generator) for k, v in self._extras.items()}
        self._trunc.global_changed()

    def global_adapter(self) -> GlobalAdapter:
        return unfolded(self._G, self._extras, self._rank, self.alpha, self.use_rslora, self.use_dora)

    def state_dict(self) -> LoraState:
        out: LoraState = {}
        for m, g in self._G.items():
            out[f"global.{a_key(m)}"], out[f"global.{b_key(m)}"] = g.A.clone(), g.B.clone()
        out.update({f"extra.{k}": v.clone() for k, v in self._extras.items()})
        return out

    def load_state_dict(self, state: LoraState) -> None:
        """Restore from :meth:`state_dict`; needs no prior :meth:`init_state`."""
        glob = section(state, "global.")
        self._rank = uniform_rank(glob)
        self._G = {m: Factors(B=p.B, A=p.A) for m, p in lora_modules(glob).items()}
        self._extras = section(state, "extra.")
        self._trunc = PrefixTruncation()
