"""FlexLoRA: the global update is this round's stacked client updates; each client restarts from
its own rank-r_k SVD truncation of it (Bai et al., "Federated Fine-tuning of Large Language Models
under Heterogeneous Tasks and Client Resources", arXiv:2402.11505).

Why the aggregate is exact: clients warm-start from their truncation of the global, so their
trained factors carry the *whole* update, and ``sum_k p_k s_k B_k A_k`` is one LoRA of rank
``sum_k r_k`` (concatenate ``p_k s_k B_k`` column-wise, ``A_k`` row-wise). That stack replaces G.
The paper forms the dense ``out x in`` sum and runs a full SVD on it; here the SVD comes from the
R x R core of the stacked factors (:mod:`fedlora.lora.factored`), which is the same decomposition
at O((out + in) R^2) cost, and is done once per module per round in :meth:`FlexLoRA.aggregate`.
G is kept in that SVD form (``U sqrt(S)``, ``sqrt(S) Vh``, components ordered by singular value,
numerically-zero ones dropped), so a client's truncation is its first r_k components:
``B = U_k sqrt(S_k) / s_k``, ``A = sqrt(S_k) Vh_k``, i.e. ``s_k B A`` is the best rank-r_k
approximation of G (Eckart-Young). Its kept energy is recorded for :meth:`FlexLoRA.payload_metrics`.
``agg-rel-error`` (relative Frobenius gap of G to the oracle, which is that very stack) is
checked in the same decomposition: ``||U_k S_k Vh_k - C|| / ||C||`` for the R x R core C
(:meth:`~fedlora.lora.factored.CoreSVD.residual`), the SVD's round-off plus any dropped component,
without a second decomposition of the out x 2R difference.

Where G has fewer than r_k nonzero components (round 1, when G is the zero initial update, or a
round in which only low-rank clients took part) the missing slots start like a fresh LoRA: B = 0
and the initial adapter's A rows for those slots, so they add nothing yet can still train.
``norm_weighted``, ``rank_cap`` and ``energy`` do not apply and are ignored.

rsLoRA: the stack uses each client's ``s_k = alpha / sqrt(r_k)`` and a client's truncation is
divided by its own ``s_k``; the global adapter folds the scaling with ``alpha = sqrt(r)`` per
module (``folded_alpha``), so it exports with ``use_rslora`` and PEFT still applies ``B @ A``.
DoRA is supported: every client warm-starts from (its truncation of) the global adapter, so its
trained magnitude vector is its whole magnitude, paired with a direction whose LoRA part the
global G averages exactly; the magnitudes are averaged with the same p_k (as FedIT averages
them). What a client's truncation drops from the direction is reported as for plain LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.aggregation.base import (
    Aggregator,
    ClientSpec,
    ClientUpdate,
    GlobalAdapter,
    check_rank,
    client_weights,
    gap_metrics,
    mean_extras,
    oracle_factors,
    section,
)
from fedlora.aggregation.registry import register
from fedlora.aggregation.truncation import truncation_metrics
from fedlora.aggregation.variants import folded_alpha
from fedlora.lora.factored import CoreSVD, Factors, empty, keep_count
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules, uniform_rank


@register
class FlexLoRA(Aggregator):
    """Stack the round's client updates exactly; redistribute per-client SVD truncations."""

    name = "flexlora"
    exact = True
    accepts_mixed_ranks = True
    refuses_dp = (
        "FlexLoRA averages the full products s_k B_k A_k and re-factors their sum by SVD; a DP bound "
        "would have to hold for that dense out x in update per module, which fedlora does not clip "
        "or noise (noise on the factors enters the product squared and the SVD re-mixes it)"
    )

    def init_state(self, initial: GlobalAdapter) -> None:
        self.check_initial(initial)
        self._rank = uniform_rank(initial.state)
        self._initial = {k: v.clone() for k, v in initial.state.items()}
        self._initial_alpha = initial.alpha
        pairs = lora_modules(initial.state)
        # G starts as the zero update: no components, singular values empty
        self._G = {m: empty(p.B.shape[0], p.A.shape[1], p.A) for m, p in pairs.items()}
        self._S = {m: p.A.new_zeros(0) for m, p in pairs.items()}
        self._extras = {k: initial.state[k].clone() for k in extra_keys(initial.state)}
        self._energy: list[float] = []

    def begin_round(self, server_round: int) -> None:
        self._energy = []

    def global_rank(self) -> int:
        """The largest number of components G keeps in a module (0 before the first round)."""
        return max((g.rank for g in self._G.values()), default=0)

    def payload(self, spec: ClientSpec) -> LoraState:
        check_rank(self.name, spec, self._rank)
        r, s_k = spec.rank, spec.scaling
        out: LoraState = {}
        for m, g in self._G.items():
            k = min(r, g.rank)
            init_a = self._initial[a_key(m)].to(g.A.dtype)
            out[a_key(m)] = torch.cat([g.A[:k], init_a[k:r]], dim=0)
            out[b_key(m)] = torch.cat([g.B[:, :k] / s_k, g.B.new_zeros(g.B.shape[0], r - k)], dim=1)
            total = float((self._S[m] ** 2).sum())
            self._energy.append(float((self._S[m][:k] ** 2).sum()) / total if total > 0 else 1.0)
        out.update({k: v.clone() for k, v in self._extras.items()})
        return out

    def payload_metrics(self) -> dict[str, float]:
        """Energy kept by each payload's truncation, over (payload, module) pairs since begin_round.

        ``trunc-energy-min``/``-mean`` (1.0 when nothing is cut, or while G is zero) and the
        matching relative Frobenius errors ``trunc-rel-error-max``/``-mean`` (``sqrt(1 - energy)``).
        """
        if not self._energy:
            return {}
        errors = [max(1.0 - e, 0.0) ** 0.5 for e in self._energy]
        return {
            "trunc-energy-min": min(self._energy), "trunc-energy-mean": sum(self._energy) / len(self._energy),
            **truncation_metrics(errors),
        }

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        p = client_weights(updates)
        for u in updates:
            check_rank(self.name, u.spec, self._rank)
        new_G: dict[str, Factors] = {}
        new_S: dict[str, torch.Tensor] = {}
        gaps: list[tuple[float, float]] = []
        for m in self._G:
            # the stack of p_k s_k B_k, A_k is the oracle itself, so the SVD's core also checks the gap
            core = CoreSVD.of(oracle_factors(updates, p, m))
            k = keep_count(core.s)  # drops numerically-zero components only
            t = core.lift(k)
            new_G[m] = t.factors
            new_S[m] = core.s[:k].clone()
            gaps.append(core.residual(k))  # ||G_m - oracle||, ||oracle|| from the same decomposition
        metrics = gap_metrics(gaps)
        self._G, self._S = new_G, new_S
        self._extras = mean_extras(updates, p)
        metrics["global-rank"] = float(self.global_rank())
        return metrics

    def global_adapter(self) -> GlobalAdapter:
        """G with per-module scaling 1 (``folded_alpha``); the initial (zero-update) adapter before round 1.

        A module whose round update was exactly zero keeps one zero component so the adapter
        still loads.
        """
        extras = {k: v.clone() for k, v in self._extras.items()}
        if self.global_rank() == 0:
            state = {**{k: v.clone() for k, v in self._initial.items()}, **extras}
            return GlobalAdapter(state=state, rank=self._rank, alpha=self._initial_alpha,
                                 use_rslora=self.use_rslora, use_dora=self.use_dora)
        state: LoraState = {}
        ranks: dict[str, int] = {}
        for m, g in self._G.items():
            if g.rank == 0:
                g = Factors(B=g.B.new_zeros(g.B.shape[0], 1), A=self._initial[a_key(m)][:1].to(g.A.dtype))
            state[a_key(m)], state[b_key(m)], ranks[m] = g.A.clone(), g.B.clone(), g.rank
        rank, rs = max(ranks.values()), self.use_rslora
        return GlobalAdapter(state={**state, **extras}, rank=rank, alpha=folded_alpha(rank, rs),
                             rank_pattern=ranks, use_rslora=rs, use_dora=self.use_dora,
                             alpha_pattern={m: folded_alpha(r, rs) for m, r in ranks.items()})

    def state_dict(self) -> LoraState:
        out = {f"initial.{k}": v.clone() for k, v in self._initial.items()}
        for m, g in self._G.items():
            if g.rank:
                out[f"global.{a_key(m)}"], out[f"global.{b_key(m)}"] = g.A.clone(), g.B.clone()
                out[f"sv.{m}"] = self._S[m].clone()
        out.update({f"extra.{k}": v.clone() for k, v in self._extras.items()})
        out["meta.initial_alpha"] = torch.tensor(self._initial_alpha, dtype=torch.float64)
        return out

    def load_state_dict(self, state: LoraState) -> None:
        """Restore from :meth:`state_dict`; needs no prior :meth:`init_state`."""
        self._initial = section(state, "initial.")
        self._rank = uniform_rank(self._initial)
        self._initial_alpha = float(state["meta.initial_alpha"])
        glob, sv = section(state, "global."), section(state, "sv.")
        self._G, self._S = {}, {}
        for m, p in lora_modules(self._initial).items():
            if a_key(m) in glob:
                self._G[m], self._S[m] = Factors(B=glob[b_key(m)], A=glob[a_key(m)]), sv[m]
            else:
                self._G[m], self._S[m] = empty(p.B.shape[0], p.A.shape[1], p.A), p.A.new_zeros(0)
        self._extras = section(state, "extra.")
        self._energy = []
