"""The server's side of differential privacy: clip, add noise, count releases, report epsilon.

:class:`PrivacyGuard` is what :class:`fedlora.strategies.lora_strategy.LoraStrategy` calls when
``privacy.mode`` is not ``none``. ``central``: each accepted reply is clipped to
``privacy.clipping_norm`` in the space the strategy averages, the strategy averages them with equal
weights, and the aggregator adds ``N(0, (sigma C / m)^2)`` to each averaged entry (sigma C on the
sum of the m clipped updates). ``local``: the clients do the clipping and noising
(:func:`fedlora.privacy.mechanism.privatize_local`); the server only tells each client how B is
weighted and counts who was sampled. Either way each round's row gets ``dp_epsilon`` (at
``dp_delta``) from :class:`fedlora.strategies.privacy_accountant.Accountant`, and what was released is
rebuilt from the run's records on ``resume=``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from fedlora.aggregation import Aggregator, ClientSpec, ClientUpdate
from fedlora.config.schema import RunConfig
from fedlora.lora.keys import LoraState
from fedlora.privacy.mechanism import clip_update, noise_generator
from fedlora.strategies.privacy_accountant import Accountant

log = logging.getLogger(__name__)


class PrivacyGuard:
    """Clipping, noise and the privacy ledger of one run (``privacy.mode`` central or local)."""

    def __init__(self, cfg: RunConfig, num_nodes: int = 0):
        self.cfg = cfg
        self.priv = cfg.privacy
        self.accountant = Accountant.from_config(cfg, num_nodes)
        self.noised_rounds = 0  # central: rounds whose noisy aggregate was released
        self.participations: Counter[int] = Counter()  # local: partition -> rounds it was sampled in
        self._norms: list[float] = []

    # -- budget ---------------------------------------------------------------------------------
    def releases(self) -> int:
        """Central: noised rounds; local: the most rounds any one client released an update in."""
        if self.priv.mode == "central":
            return self.noised_rounds
        return max(self.participations.values(), default=0)

    def epsilon(self) -> float:
        return self.accountant.epsilon_after(self.releases())

    def rounds_allowed(self, num_rounds: int) -> int:
        """Rounds (of ``num_rounds``) the run may do without exceeding ``privacy.target_epsilon``,
        counting every round as a release (conservative for local mode and failed rounds)."""
        if self.priv.target_epsilon <= 0:
            return num_rounds
        return self.accountant.rounds_within(self.priv.target_epsilon, num_rounds)

    # -- one round ------------------------------------------------------------------------------
    def train_config(self, aggregator: Aggregator, spec: ClientSpec) -> dict[str, Any]:
        """Extra keys of a train message: the B weight a local-DP client clips and noises with."""
        if self.priv.mode != "local":
            return {}
        from fedlora import protocol as P

        return {P.DP_B_WEIGHT: float(aggregator.dp_b_weight(spec))}

    def sampled(self, partitions: Iterable[int], pool: int = 0) -> None:
        """This round trains ``partitions``, drawn from ``pool`` eligible nodes. Local DP: these clients
        release an update (counted whether or not it arrives). Central DP: a round that sampled a
        larger share than the accountant assumes (nodes went away) raises the accountant's rate for
        the whole run, so the reported epsilon never understates what was spent."""
        self._norms = []
        partitions = list(partitions)
        if self.priv.mode == "local":
            self.participations.update(partitions)
        if pool > 0 and len(partitions) * self.accountant.population > self.accountant.sample_size * pool:
            log.warning("privacy: %d of %d nodes sampled (rate %.3g) > the accountant's %d of %d; epsilon "
                        "is accounted at %d of %d from now on", len(partitions), pool, len(partitions) / pool,
                        self.accountant.sample_size, self.accountant.population, len(partitions), pool)
            self.accountant = dataclasses.replace(self.accountant, sample_size=len(partitions),
                                                  population=pool)

    def clip(self, aggregator: Aggregator, spec: ClientSpec, state: LoraState, payload: LoraState
             ) -> LoraState:
        """Central DP: the reply clipped to the bound; local DP: the reply as is (already noised)."""
        if self.priv.mode != "central":
            return state
        clipped, norm = clip_update(state, payload, self.priv.clipping_norm, aggregator.dp_b_weight(spec))
        self._norms.append(norm)
        return clipped

    def add_noise(self, aggregator: Aggregator, updates: Sequence[ClientUpdate], rnd: int
                  ) -> dict[str, float]:
        """Central DP: noise the fresh aggregate; both modes: this round's privacy metrics."""
        metrics: dict[str, float] = {}
        if self.priv.mode == "central":
            std = self.priv.noise_multiplier * self.priv.clipping_norm / len(updates)
            aggregator.add_dp_noise(updates, std, noise_generator(self.priv.noise_seed, "central", rnd))
            self.noised_rounds += 1
            bound = self.priv.clipping_norm
            metrics.update(dp_noise_std=std, dp_clipped_fraction=sum(n > bound for n in self._norms)
                           / max(len(self._norms), 1),
                           dp_update_norm_mean=sum(self._norms) / max(len(self._norms), 1))
        metrics.update(dp_epsilon=self.epsilon(), dp_delta=self.priv.delta, dp_releases=self.releases(),
                       dp_sampling_rate=self.accountant.sampling_rate,
                       dp_sample_size=self.accountant.sample_size, dp_population=self.accountant.population)
        return metrics

    # -- resume ---------------------------------------------------------------------------------
    def restore(self, rows: Sequence[dict[str, Any]], clients: Sequence[dict[str, Any]],
                rejected: Sequence[dict[str, Any]]) -> None:
        """Rebuild the ledger from a checkpoint's records: noised rounds from the metric rows, and
        each partition's train participations from its accepted and rejected train replies. The
        sampling share is the largest of this run's and the recorded rounds' (``dp_sample_size`` of
        ``dp_population``)."""
        self.noised_rounds = sum(1 for r in rows if "dp_noise_std" in r)
        for r in rows:  # the largest share any recorded round was accounted at
            if "dp_sample_size" in r and "dp_population" in r:
                k, n = int(r["dp_sample_size"]), int(r["dp_population"])
                if k * self.accountant.population > self.accountant.sample_size * n:
                    self.accountant = dataclasses.replace(self.accountant, sample_size=k, population=n)
        self.participations = Counter(
            int(r["partition_id"]) for r in (*clients, *rejected)
            if r.get("stage") == "train" and r.get("partition_id") is not None)
        if self.releases():
            log.info("privacy: resumed after %d release(s), epsilon %.4g at delta %g",
                     self.releases(), self.epsilon(), self.priv.delta)

    def summary(self) -> dict[str, Any]:
        """The summary's and model card's privacy entry."""
        p = self.priv
        return {"mode": p.mode, "clipping_norm": p.clipping_norm, "noise_multiplier": p.noise_multiplier,
                "delta": p.delta, "epsilon": self.epsilon(), "releases": self.releases(),
                "sampling_rate": self.accountant.sampling_rate, "target_epsilon": p.target_epsilon,
                "sample_size": self.accountant.sample_size, "population": self.accountant.population,
                "accounting": self.accountant.method, "accountant": self.accountant.describe(),
                "unit": _unit(p.mode, self.accountant.method)}


def _unit(mode: str, method: str) -> str:
    """What one unit of privacy protects: the neighbouring relation the epsilon is stated for."""
    if mode == "local":
        return "client-level local DP (any two updates of one client)"
    if method == "without_replacement":
        return "client-level (replace one client's data)"
    return "client-level (add or remove one client's data)"
