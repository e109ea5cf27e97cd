"""FFA-LoRA: A frozen and shared by every client, only B trained and averaged (Sun et al.,
"Improving LoRA in Privacy-preserving Federated Learning", arXiv:2403.12313).

Why it is exact: every client multiplies its B by the *same* A, so the oracle
``sum_k p_k s_k B_k A_k`` factors as ``(sum_k p_k s_k B_k) A`` and averaging B alone loses nothing.

Mixed ranks: the shared A is the ``r_max x in`` draw of the initial adapter (``lora.init_seed``),
and a rank-r_k client uses its first r_k rows (it regenerates the r_max draw and slices it, so
nothing about A travels). Then ``s_k B_k A[:r_k] = s_k pad(B_k) A`` with B zero-padded to r_max
columns, and the global ``B_g = sum_k p_k s_k pad(B_k)`` (scaling folded in) is still exact.

Round trip: a client receives ``B_g[:, :r_k] / s_k``, so its starting update ``s_k B A[:r_k]`` is
the global update restricted to its r_k leading slots; what the other slots carry is reported by
:meth:`FFALoRA.payload_metrics`. Payloads and replies hold B (and any trainable head) only, which
halves the upload of FedIT for square modules. :meth:`FFALoRA.a_hash` gives the fingerprint a
client's regenerated A must match. Partial participation: ``B_g`` is this round's weighted mean,
so slots no participant holds become zero (exactly what the oracle of that round says).
``norm_weighted``, ``rank_cap`` and ``energy`` do not apply and are ignored.

rsLoRA: ``s_k = alpha / sqrt(r_k)`` enters exactly where ``alpha / r_k`` did, so the mean stays
exact for mixed ranks. DoRA is supported: every client's direction is ``W0 + s_k B_k A[:r_k]``
against the same shared A and the global direction is their exact weighted mean, so the
magnitude vectors (one per output feature, whatever the rank) are averaged with the same p_k.
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
from fedlora.lora.factored import Factors
from fedlora.lora.init import state_hash
from fedlora.lora.keys import LoraState, a_key, b_key, extra_keys, lora_modules, uniform_rank
from fedlora.privacy.mechanism import gaussian_like


@register
class FFALoRA(Aggregator):
    """Average B against a frozen, seed-generated A shared by every client."""

    name = "ffa"
    exact = True
    accepts_mixed_ranks = True
    freeze_a = True

    def init_state(self, initial: GlobalAdapter) -> None:
        self.check_initial(initial)
        self._rank = uniform_rank(initial.state)
        pairs = lora_modules(initial.state)
        self._A = {m: p.A.clone() for m, p in pairs.items()}
        self._B = {m: initial.module_scaling(m) * p.B for m, p in pairs.items()}  # folded: update = B A
        self._extras = {k: initial.state[k].clone() for k in extra_keys(initial.state)}
        self._trunc = PrefixTruncation()

    def begin_round(self, server_round: int) -> None:
        self._trunc.begin_round()

    def _check_rank(self, spec: ClientSpec) -> None:
        check_rank("ffa", spec, self._rank, f" (the shared A has {self._rank} rows: the initial adapter "
                   "must be built at the largest client rank)")

    def _factors(self, B: dict[str, torch.Tensor]) -> dict[str, Factors]:
        """Folded B factors paired with the shared A: the update each module applies."""
        return {m: Factors(B=b, A=self._A[m].to(b.dtype)) for m, b in B.items()}

    def a_hash(self, rank: int) -> int:
        """``state_hash`` of the shared A's first ``rank`` rows, keyed ``<module>.lora_A.weight``.

        A client at rank ``rank`` hashes the A it regenerated the same way; a mismatch means it
        drew a different A (other seed, shapes or RNG) and its B would be averaged against the
        wrong basis.
        """
        if not 0 < rank <= self._rank:
            raise ValueError(f"ffa: a_hash rank must be in 1..{self._rank}, got {rank}")
        return state_hash({a_key(m): A[:rank] for m, A in self._A.items()})

    def shared_a(self, rank: int) -> LoraState:
        """The frozen A factors a rank-``rank`` client trains against (copies)."""
        return {a_key(m): A[:rank].clone() for m, A in self._A.items()}

    def payload(self, spec: ClientSpec) -> LoraState:
        self._check_rank(spec)
        out: LoraState = {b_key(m): B[:, : spec.rank] / spec.scaling for m, B in self._B.items()}
        out.update({k: v.clone() for k, v in self._extras.items()})
        self._trunc.record(self._factors(self._B), spec.rank)
        return out

    def payload_metrics(self) -> dict[str, float]:
        """Relative Frobenius error of each payload's start update vs the global, per module.

        ``trunc-rel-error-max``/``-mean`` over (payload, module) pairs since :meth:`begin_round`:
        0 for clients at the full rank, and for every client while the global update is zero.
        """
        return self._trunc.metrics()

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        p = client_weights(updates)
        for u in updates:
            self._check_rank(u.spec)
        new_B: dict[str, torch.Tensor] = {}
        with_a: list[ClientUpdate] = []  # the same updates with their (shared) A, for the oracle
        for m in self._A:
            parts = [pk * u.spec.scaling * F.pad(u.state[b_key(m)], (0, self._rank - u.spec.rank))
                     for pk, u in zip(p, updates, strict=True)]
            new_B[m] = torch.stack(parts).sum(dim=0)
        for u in updates:
            dtype = u.state[b_key(next(iter(self._A)))].dtype
            shared = {a_key(m): A[: u.spec.rank].to(dtype) for m, A in self._A.items()}
            with_a.append(ClientUpdate(u.spec, {**u.state, **shared}, u.num_examples))
        metrics = gap_to_oracle(with_a, p, self._factors(new_B))
        self._B = new_B
        self._extras = mean_extras(updates, p)
        self._trunc.global_changed()
        return metrics

    def dp_b_weight(self, spec: ClientSpec) -> float:
        return spec.scaling  # B is averaged folded, s_k B_k

    def add_dp_noise(self, updates: Sequence[ClientUpdate], std: float, generator: torch.Generator) -> None:
        """Noise on the folded B columns some client of the round trained (and on any extras); the
        shared A is data-independent and stays exact."""
        held = max(u.spec.rank for u in updates)
        for m, B in self._B.items():
            B = B.clone()
            B[:, :held] += gaussian_like(B[:, :held], std, generator)
            self._B[m] = B
        self._extras = {k: v + gaussian_like(v, std, generator) for k, v in self._extras.items()}
        self._trunc.global_changed()

    def global_adapter(self) -> GlobalAdapter:
        G = {m: Factors(B=self._B[m], A=A) for m, A in self._A.items()}
        return unfolded(G, self._extras, self._rank, self.alpha, self.use_rslora, self.use_dora)

    def state_dict(self) -> LoraState:
        out = {f"shared.{a_key(m)}": A.clone() for m, A in self._A.items()}
        out.update({f"global.{b_key(m)}": B.clone() for m, B in self._B.items()})
        out.update({f"extra.{k}": v.clone() for k, v in self._extras.items()})
        return out

    def load_state_dict(self, state: LoraState) -> None:
        """Restore from :meth:`state_dict`; needs no prior :meth:`init_state`."""
        shared, glob = section(state, "shared."), section(state, "global.")
        pairs = lora_modules({**shared, **glob})
        self._rank = uniform_rank({**shared, **glob})
        self._A = {m: p.A for m, p in pairs.items()}
        self._B = {m: p.B for m, p in pairs.items()}
        self._extras = section(state, "extra.")
        self._trunc = PrefixTruncation()
