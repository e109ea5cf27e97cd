"""Epsilon at a fixed delta for the rounds released so far, from ``dp-accounting``'s RDP accountant.

Why RDP from ``dp-accounting``: it is Google's maintained accountant library (the one TensorFlow
Privacy builds on), pure Python with wheels for its few dependencies (scipy, mpmath, dm-tree), so it
installs cleanly next to torch and numpy 2 (Opacus' accountants come bundled with its per-sample
gradient engine, which fedlora does not use), and its RDP accountant composes the Poisson-subsampled
Gaussian mechanism over tens to thousands of rounds in milliseconds. Flower 1.41's DP wrappers add
noise but keep no accountant.

What is accounted (docs/privacy.md gives the reasoning):

* ``central``: one Gaussian mechanism per aggregated round on the sum of clipped client updates,
  noise ``sigma * C`` with sensitivity ``C`` (adding or removing one client's whole data), each
  client included with probability ``q = sampled / num_clients``. fedlora samples a fixed number of
  clients without replacement; like DP-FedAvg and Flower's accountant, the accountant treats that
  as Poisson sampling at rate ``q`` (with ``q = 1`` there is no amplification at all).
* ``local``: each client's own release, noise ``sigma * C`` on an update clipped to ``C``. Two
  possible updates of a client differ by up to ``2 C``, so each release is a Gaussian mechanism with
  noise multiplier ``sigma / 2``, composed over the rounds that client was sampled in, without
  sampling amplification (the server knows who was sampled). The reported epsilon is the worst
  client's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlora.config.schema import RunConfig


@dataclass(frozen=True)
class Accountant:
    """Epsilon of ``rounds`` releases under one mode's mechanism (see the module docstring)."""

    mode: str
    noise_multiplier: float
    delta: float
    sampling_rate: float = 1.0

    @classmethod
    def from_config(cls, cfg: RunConfig, num_nodes: int = 0) -> Accountant:
        """The run's accountant; the sampling rate is what the strategy samples from ``num_nodes``
        (the nodes discovery accepted; ``federation.num_clients`` when 0, as at config time)."""
        fed, priv = cfg.federation, cfg.privacy
        n = max(num_nodes or fed.num_clients, 1)
        sampled = min(n, max(math.ceil(fed.fraction_train * n), fed.min_train_clients))
        return cls(mode=priv.mode, noise_multiplier=priv.noise_multiplier, delta=priv.delta,
                   sampling_rate=sampled / n)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` releases (central: rounds; local: a client's
        participations); 0 for none."""
        if rounds <= 0:
            return 0.0
        import dp_accounting as dpa
        from dp_accounting.rdp import RdpAccountant

        if self.mode == "local":
            event = dpa.GaussianDpEvent(self.noise_multiplier / 2.0)
        elif self.mode == "central":
            event = dpa.GaussianDpEvent(self.noise_multiplier)
            if self.sampling_rate < 1.0:
                event = dpa.PoissonSampledDpEvent(self.sampling_rate, event)
        else:
            raise ValueError(f"privacy.mode: no accounting for mode {self.mode!r}")
        absl = logging.getLogger("absl")  # fractional orders that fail to converge are skipped, noisily
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            accountant = RdpAccountant()
            accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
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
