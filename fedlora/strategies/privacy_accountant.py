"""Epsilon at a fixed delta for the rounds released so far, from Flower's RDP accountant.

Why Flower's ``RdpAccountant`` (``flwr.serverapp``, a thin layer over Google's ``dp-accounting``):
it is Flower's own DP accounting building block, strategy-agnostic, so it fits fedlora's factored
strategies although Flower's DP strategy wrappers do not (docs/privacy.md says why), and its
sampling models include sampling *without replacement*, which is what fedlora's strategy does.
``dp-accounting`` is maintained by Google (TensorFlow Privacy builds on it), pure Python with wheels
for its few dependencies, and composes thousands of rounds in milliseconds; Flower imports it lazily,
so fedlora depends on it directly.

What is accounted (``privacy.accounting``; docs/privacy.md gives the reasoning):

* ``central``, one release per aggregated round: the sum of the m clipped updates plus noise
  sigma C. ``without_replacement`` (the default): fedlora draws k of the n nodes without
  replacement, neighbours differ by *replacing* one client's data, so the sum's sensitivity is 2C
  and the event's noise multiplier is sigma / 2 (a formal bound for fedlora's sampler).
  ``poisson``: neighbours add or remove one client (sensitivity C, multiplier sigma), and the
  fixed-size draw is treated as Poisson sampling at q = k / n, as DP-FedAvg reports it (not a formal
  bound for a fixed-size draw). ``no_amplification``: add/remove, multiplier sigma, no credit for
  sampling (what Flower's fixed-clipping wrapper accounts).
* ``local``: each client's own release, noise sigma C on an update clipped to C; two updates of a
  client differ by up to 2C, so each release is a Gaussian with multiplier sigma / 2, composed over
  the rounds that client was sampled in, without amplification (the server knows who was
  sampled). The epsilon reported is the worst client's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlora.config.schema import RunConfig

def resolve_accounting(mode: str, accounting: str) -> str:
    """``auto``: ``without_replacement`` for central DP, ``no_amplification`` for local DP."""
    if accounting != "auto":
        return accounting
    return "no_amplification" if mode == "local" else "without_replacement"


@dataclass(frozen=True)
class Accountant:
    """Epsilon of ``rounds`` releases under one mode's mechanism (see the module docstring):
    ``sample_size`` of ``population`` nodes sampled per round."""

    mode: str
    noise_multiplier: float
    delta: float
    sample_size: int = 1
    population: int = 1
    accounting: str = "auto"

    @classmethod
    def from_config(cls, cfg: RunConfig, num_nodes: int = 0) -> Accountant:
        """The run's accountant: what the strategy samples from ``num_nodes`` (the nodes discovery
        accepted; ``federation.num_clients`` when 0, as at config time)."""
        fed, priv = cfg.federation, cfg.privacy
        n = max(num_nodes or fed.num_clients, 1)
        sampled = min(n, max(math.ceil(fed.fraction_train * n), fed.min_train_clients))
        return cls(mode=priv.mode, noise_multiplier=priv.noise_multiplier, delta=priv.delta,
                   sample_size=sampled, population=n, accounting=priv.accounting)

    @property
    def sampling_rate(self) -> float:
        return self.sample_size / self.population

    @property
    def method(self) -> str:
        """The resolved accounting: ``without_replacement``, ``poisson`` or ``no_amplification``."""
        return resolve_accounting(self.mode, self.accounting)

    @property
    def event_multiplier(self) -> float:
        """The Gaussian's noise multiplier relative to the neighbouring relation's sensitivity."""
        if self.mode == "local" or self.method == "without_replacement":
            return self.noise_multiplier / 2.0  # sensitivity 2C: replace one client / any two updates
        return self.noise_multiplier

    def describe(self) -> str:
        """For the summary and the model card."""
        relation = {"without_replacement": "replace-one", "poisson": "add-or-remove-one",
                    "no_amplification": "add-or-remove-one"}[self.method]
        return f"RDP (Flower RdpAccountant / dp-accounting), {self.method.replace('_', ' ')}, {relation}"

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` releases (central: rounds; local: a client's
        participations); 0 for none."""
        if rounds <= 0:
            return 0.0
        if self.mode not in ("central", "local"):
            raise ValueError(f"privacy.mode: no accounting for mode {self.mode!r}")
        from flwr.serverapp import (
            GaussianPrivacyEvent,
            NeighboringRelation,
            PrivacyConfig,
            RdpAccountant,
            SamplingMethod,
        )

        sampling = {"without_replacement": SamplingMethod.WITHOUT_REPLACEMENT,
                    "poisson": SamplingMethod.POISSON,
                    "no_amplification": SamplingMethod.NO_AMPLIFICATION}[self.method]
        relation = (NeighboringRelation.REPLACE_ONE if sampling is SamplingMethod.WITHOUT_REPLACEMENT
                    else NeighboringRelation.ADD_OR_REMOVE_ONE)
        absl = logging.getLogger("absl")  # fractional orders that fail to converge are skipped, noisily
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            accountant = RdpAccountant(PrivacyConfig(target_delta=self.delta, population_size=self.population,
                                                     neighboring_relation=relation, sampling_method=sampling))
            accountant.compose(GaussianPrivacyEvent(noise_multiplier=self.event_multiplier,
                                                    sample_size=self.sample_size,
                                                    population_size=self.population), rounds)
            return float(accountant.get_epsilon(self.delta))
        finally:
            absl.setLevel(level)

    def rounds_within(self, target: float, max_rounds: int) -> int:
        """The most releases (up to ``max_rounds``) whose epsilon stays at or below ``target``."""
        lo, hi = 0, max_rounds  # epsilon grows with rounds: binary search the last round within
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.epsilon_after(mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo
