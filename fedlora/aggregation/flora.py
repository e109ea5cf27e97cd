"""FLoRA: stack every round's client LoRAs into a frozen global update (Wang et al., "FLoRA:
Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations",
arXiv:2409.05976).

Why it is exact: ``sum_k p_k s_k B_k A_k`` *is* one LoRA of rank ``sum_k r_k`` whose B is the
column-concatenation of ``p_k s_k B_k`` and whose A is the row-concatenation of ``A_k``, so
appending that stack to the global factors G (scaling folded in) adds the oracle exactly, for any
mix of ranks. G grows by ``sum_k r_k`` per round; ``rank_cap`` (> 0) and/or ``energy`` (> 0) compress
it by a factored SVD truncation (Eckart-Young), and the energy kept is reported: exact up to the
declared cap. G starts empty (rank 0).

Each round every client trains a *fresh* LoRA of its own rank on top of G, which it applies as a
second, frozen adapter (:meth:`FLoRA.frozen`, alpha == rank per module so its scaling is 1). The
fresh A is drawn like PEFT's default init (Kaiming-uniform, bound ``1/sqrt(in)``), B = 0, from a
``torch.Generator`` seeded by SHA-256 of ``(base seed, round, client id)``: payloads are
reproducible (retries, resume) yet differ across clients and rounds. The base seed is the
``init_seed`` constructor argument, or by default the :func:`~fedlora.lora.init.state_hash` of the
initial adapter's A factors, which is itself fixed by ``lora.init_seed`` and the model's shapes.
``norm_weighted`` does not apply and is ignored.

Metrics: ``agg-rel-error`` compares the round's increment (new G minus old G, compression
included) with the oracle. The stack of the round *is* the oracle, so the increment misses it by
exactly what compression dropped, ``(G_new - G_old) - oracle = -(dropped)``, whose norm the SVD
gives for free: the metric is ``||dropped|| / ||oracle||`` (0 without compression, and no
extra decomposition: ``||oracle||`` comes from the compression's QR, ``CoreSVD.block_norm``; the
tests check it against a dense computation); ``||G||`` for the bound comes from float64 Gram
matrices. ``energy-kept`` is the smallest share of energy a module kept in this round's
compression (1.0 without one); ``global-rank`` is the largest module rank of G;
``cum-rel-error-bound`` bounds ``||G - sum of all rounds' oracles|| / ||G||`` by the accumulated
norm of everything compression ever dropped (triangle inequality), 0 while nothing was dropped.

rsLoRA: the stack uses each client's ``s_k = alpha / sqrt(r_k)``; the global adapter folds the
scaling with ``alpha = sqrt(r)`` per module (``folded_alpha``), so it exports with ``use_rslora``
and PEFT still applies ``B @ A``. The frozen adapter is plain LoRA with ``alpha == rank``
(scaling 1 either way). DoRA is refused (:attr:`FLoRA.refuses_dora`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from fedlora.aggregation.base import (
    Aggregator,
    ClientSpec,
    ClientUpdate,
    GlobalAdapter,
    client_weights,
    mean_extras,
    section,
)
from fedlora.aggregation.registry import register
from fedlora.aggregation.variants import folded_alpha
from fedlora.lora.factored import Factors, compress, empty, frobenius_norm, stack
from fedlora.lora.init import state_hash
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules


def fresh_seed(base_seed: int, server_round: int, client_id: str) -> int:
    """The generator seed of a client's fresh LoRA: SHA-256 of (base seed, round, client id), 63 bits."""
    digest = hashlib.sha256(f"flora|{base_seed}|{server_round}|{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@register
class FLoRA(Aggregator):
    """Append each round's stacked client updates to a frozen global update, compressed to a cap."""

    name = "flora"
    exact = True
    accepts_mixed_ranks = True
    refuses_dp = (
        "FLoRA stacks every client's own factors into the global adapter, so the server publishes "
        "each client's update individually: there is no sum over clients for one noise draw to hide "
        "a client in, and noise on both stacked factors enters their product B A squared"
    )
    refuses_dora = (
        "each round's clients train a fresh adapter on top of the global update G, which rides as a "
        "second, frozen adapter; PEFT's DoRA normalises by the base weight alone (||W0 + s B A||, "
        "not ||W0 + G + s B A||), so a client's magnitude vector would be learned for a direction "
        "that leaves G out, and the stacked G of all rounds has no single direction the averaged "
        "magnitudes could belong to."
    )

    def init_state(self, initial: GlobalAdapter) -> None:
        self.check_initial(initial)
        pairs = lora_modules(initial.state)
        self._initial = {k: v.clone() for k, v in initial.state.items()}
        self._initial_rank, self._initial_alpha = initial.rank, initial.alpha
        self._seed = self.init_seed if self.init_seed is not None else state_hash(
            {a_key(m): p.A for m, p in pairs.items()})
        self._G = {m: empty(p.B.shape[0], p.A.shape[1], p.A) for m, p in pairs.items()}
        self._extras = {k: initial.state[k].clone() for k in extra_keys(initial.state)}
        self._dropped = {m: 0.0 for m in pairs}  # accumulated Frobenius norm dropped by compression
        self._round = 0

    def begin_round(self, server_round: int) -> None:
        self._round = server_round

    @property
    def base_seed(self) -> int:
        """The seed every fresh payload derives from (see :func:`fresh_seed`)."""
        return self._seed

    def payload(self, spec: ClientSpec) -> LoraState:
        gen = torch.Generator().manual_seed(fresh_seed(self._seed, self._round, spec.client_id))
        out: LoraState = {}
        for m, g in sorted(self._G.items()):
            inn, out_dim = g.A.shape[1], g.B.shape[0]
            dtype = self._initial[a_key(m)].dtype
            bound = 1.0 / math.sqrt(inn)  # kaiming_uniform_(a=sqrt(5)) as in nn.Linear / PEFT
            out[a_key(m)] = ((torch.rand(spec.rank, inn, generator=gen) * 2 - 1) * bound).to(dtype)
            out[b_key(m)] = torch.zeros(out_dim, spec.rank, dtype=dtype)
        out.update({k: v.clone() for k, v in self._extras.items()})
        return out

    def frozen(self, spec: ClientSpec) -> LoraState | None:
        """The global update G (scaling folded: load with alpha == rank per module), or None if empty."""
        if self.global_rank() == 0:
            return None
        return self._g_state()

    def _g_state(self) -> LoraState:
        out: LoraState = {}
        for m, g in self._G.items():
            if g.rank == 0:
                continue
            out[a_key(m)] = g.A.clone()
            out[b_key(m)] = g.B.clone()
        return out

    def global_rank(self) -> int:
        """The largest module rank of G (0 while G is empty)."""
        return max((g.rank for g in self._G.values()), default=0)

    def payload_metrics(self) -> dict[str, float]:
        """FLoRA never truncates a payload (clients start from a fresh LoRA): no metrics."""
        return {}

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        p = client_weights(updates)
        new_G: dict[str, Factors] = {}
        energy_kept, gap_sq, oracle_sq, worst = 1.0, 0.0, 0.0, 0.0
        dropped = dict(self._dropped)
        for m, old in self._G.items():
            parts = [Factors(B=u.spec.scaling * u.state[b_key(m)], A=u.state[a_key(m)]) for u in updates]
            inc = stack(parts, p)  # the round's oracle, exactly
            old = Factors(B=old.B.to(inc.B.dtype), A=old.A.to(inc.A.dtype))
            result = compress(stack([old, inc]), rank=self.rank_cap, energy=self.energy)
            new_G[m] = result.factors
            energy_kept = min(energy_kept, result.energy_kept)
            dropped[m] += result.discarded
            if result.discarded > 0:  # otherwise the increment is the oracle itself
                # ||inc|| from the compression's own QR (inc is the block after old's columns)
                core = result.core
                norm = core.block_norm(old.rank, old.rank + inc.rank) if core else frobenius_norm(inc)
                gap_sq, oracle_sq = gap_sq + result.discarded**2, oracle_sq + norm**2
                worst = max(worst, result.discarded / norm if norm > 0 else result.discarded)
        self._G, self._dropped = new_G, dropped
        self._extras = mean_extras(updates, p)
        metrics = {"agg-rel-error": math.sqrt(gap_sq / oracle_sq) if oracle_sq > 0 else math.sqrt(gap_sq),
                   "agg-rel-error-max": worst}
        metrics["energy-kept"] = energy_kept
        metrics["global-rank"] = float(self.global_rank())
        metrics["cum-rel-error-bound"] = self._cum_bound()
        return metrics

    def _cum_bound(self) -> float:
        bound_sq = sum(d**2 for d in self._dropped.values())
        if bound_sq == 0:
            return 0.0
        norm_sq = sum(frobenius_norm(g) ** 2 for g in self._G.values())
        return math.sqrt(bound_sq / norm_sq) if norm_sq > 0 else 1.0

    def global_adapter(self) -> GlobalAdapter:
        """G with per-module scaling 1 (``folded_alpha``); the initial (zero-update) adapter while G
        is empty."""
        if self.global_rank() == 0:
            state = {**{k: v.clone() for k, v in self._initial.items()},
                     **{k: v.clone() for k, v in self._extras.items()}}
            return GlobalAdapter(state=state, rank=self._initial_rank, alpha=self._initial_alpha,
                                 use_rslora=self.use_rslora)
        ranks = {m: g.rank for m, g in self._G.items()}
        rank, rs = max(ranks.values()), self.use_rslora
        state = {**self._g_state(), **{k: v.clone() for k, v in self._extras.items()}}
        return GlobalAdapter(state=state, rank=rank, alpha=folded_alpha(rank, rs), rank_pattern=dict(ranks),
                             alpha_pattern={m: folded_alpha(r, rs) for m, r in ranks.items()}, use_rslora=rs)

    def state_dict(self) -> LoraState:
        out = {f"initial.{k}": v.clone() for k, v in self._initial.items()}
        out.update({f"global.{k}": v for k, v in self._g_state().items()})
        out.update({f"extra.{k}": v.clone() for k, v in self._extras.items()})
        out.update({f"dropped.{m}": torch.tensor(d, dtype=torch.float64) for m, d in self._dropped.items()})
        out["meta.seed"] = torch.tensor(self._seed, dtype=torch.int64)
        out["meta.round"] = torch.tensor(self._round, dtype=torch.int64)
        out["meta.initial_rank"] = torch.tensor(self._initial_rank, dtype=torch.int64)
        out["meta.initial_alpha"] = torch.tensor(self._initial_alpha, dtype=torch.float64)
        return out

    def load_state_dict(self, state: LoraState) -> None:
        """Restore from :meth:`state_dict`; needs no prior :meth:`init_state`."""
        self._initial = section(state, "initial.")
        shapes = lora_modules(self._initial)
        glob = section(state, "global.")
        self._G = {}
        for m, p in shapes.items():  # a module absent from "global." is still empty (rank 0)
            if a_key(m) in glob:
                self._G[m] = Factors(B=glob[b_key(m)], A=glob[a_key(m)])
            else:
                self._G[m] = empty(p.B.shape[0], p.A.shape[1], p.A)
        self._extras = section(state, "extra.")
        self._dropped = {m: float(v) for m, v in section(state, "dropped.").items()}
        self._seed = int(state["meta.seed"])
        self._round = int(state["meta.round"])
        self._initial_rank = int(state["meta.initial_rank"])
        self._initial_alpha = float(state["meta.initial_alpha"])
