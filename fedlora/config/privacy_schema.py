"""The ``privacy`` config group: client-level differential privacy and secure aggregation.

Kept apart from :mod:`fedlora.config.schema` (one module per group that grew its own rules). The
mechanism and the accounting live in :mod:`fedlora.privacy`; docs/privacy.md explains both and
holds the strategy x privacy compatibility table that :func:`privacy_cross_checks` enforces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedlora.config.choices import PRIVACY_ACCOUNTINGS, PRIVACY_MODES, choice_problems

if TYPE_CHECKING:
    from fedlora.config.schema import RunConfig

SECAGG_REASON = (
    "Flower 1.41's SecAgg+ (secaggplus_mod + SecAggPlusWorkflow) runs only on the legacy strategy "
    "stack (LegacyContext, FitRes replies); fedlora's strategies are Message-API strategies with "
    "per-client payloads, and secaggplus_mod fails on a Message-API train reply (see docs/privacy.md)"
)


@dataclass
class PrivacyConfig:
    """Client-level DP on the LoRA factors a strategy aggregates (see docs/privacy.md).

    ``clipping_norm`` bounds each client's update (its change to the aggregated tensors) in L2;
    the Gaussian noise has standard deviation ``noise_multiplier * clipping_norm`` on the sum of
    the clipped updates (``central``) or on each client's own update (``local``). ``delta`` is the
    delta of the (epsilon, delta) reported every round; ``target_epsilon`` > 0 ends the run before
    a round would exceed it. ``accounting`` picks the sampling model of the epsilon (``auto``:
    sampling without replacement for central DP, no amplification for local DP; see
    :mod:`fedlora.strategies.privacy_accountant`). ``noise_seed`` >= 0 makes the noise reproducible
    (experiments only: a deployment should keep -1, fresh OS entropy).
    """

    mode: str = "none"
    clipping_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    noise_seed: int = -1
    secure_aggregation: bool = False
    accounting: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def problems(self) -> list[str]:
        out = choice_problems("privacy.mode", self.mode, PRIVACY_MODES)
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            out.append(f"privacy.clipping_norm: expected a finite value > 0, got {self.clipping_norm}")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            out.append(f"privacy.noise_multiplier: expected a finite value > 0 (no noise gives no privacy), "
                       f"got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            out.append(f"privacy.delta: expected a value in (0, 1), got {self.delta}")
        if self.target_epsilon < 0:
            out.append(f"privacy.target_epsilon: expected >= 0 (0 = no target), got {self.target_epsilon}")
        out += choice_problems("privacy.accounting", self.accounting, PRIVACY_ACCOUNTINGS)
        if self.mode == "local" and self.accounting in ("poisson", "without_replacement"):
            out.append(f"privacy.accounting: {self.accounting!r} credits client sampling, which local DP "
                       "cannot claim (the server knows who was sampled and sees each update); use auto or "
                       "no_amplification")
        if self.target_epsilon > 0 and not self.enabled:
            out.append("privacy.target_epsilon: needs privacy.mode=central or local")
        return out


def privacy_cross_checks(cfg: RunConfig) -> list[str]:
    """Strategy x privacy rules, the weighting DP needs, and a budget that allows one round."""
    from fedlora.aggregation import AGGREGATORS

    priv = cfg.privacy
    out: list[str] = []
    agg = AGGREGATORS.get(cfg.strategy.name)
    if priv.secure_aggregation:
        # SecAgg+ is unavailable whatever the strategy (SECAGG_REASON); a strategy's refuses_dp is
        # about DP noise (FlexLoRA's SVD, say), not secure summation, so it is not the reason here
        out.append(f"privacy.secure_aggregation: not available with strategy {cfg.strategy.name!r}: "
                   f"{SECAGG_REASON}")
    if not priv.enabled:
        return out
    if agg is not None and agg.refuses_dp:
        out.append(f"privacy.mode: strategy {cfg.strategy.name!r} does not support differential privacy: "
                   f"{agg.refuses_dp}")
    if cfg.strategy.name == "hetlora" and cfg.strategy.norm_weighted:
        out.append("strategy.norm_weighted: not available under differential privacy: each client's weight "
                   "p_k ||s_k B_k A_k|| would depend on its own update, so one client could outweigh the "
                   "clipping bound; set strategy.norm_weighted=false")
    if cfg.federation.weighting != "uniform":
        out.append(f"federation.weighting: differential privacy needs 'uniform' (each client's influence is "
                   f"bounded by privacy.clipping_norm only if all weigh the same), got "
                   f"{cfg.federation.weighting!r}; privacy={priv.mode} sets it unless overridden")
    if not out and priv.target_epsilon > 0:
        from fedlora.strategies.privacy_accountant import Accountant

        accountant = Accountant.from_config(cfg)
        first = accountant.epsilon_after(1)
        if first > priv.target_epsilon:
            out.append(f"privacy.target_epsilon: {priv.target_epsilon} is exceeded by the first round "
                       f"already (epsilon {first:.3g} at delta {priv.delta}); raise "
                       "privacy.noise_multiplier or the target")
    return out
