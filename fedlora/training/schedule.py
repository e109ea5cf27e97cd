"""Learning rate per federated round.

Clients are stateless between rounds (a fresh optimizer each round, since a simulation worker
serves a different client every time), so the schedule is a function of the *round*, not of the
local step: the server computes it and sends it with the round's instructions. Within a round the
learning rate is constant. Pure Python, so the server can use it without importing torch.
"""

from __future__ import annotations

import math

from fedlora.config.choices import LR_SCHEDULES
from fedlora.config.train_schema import TrainConfig


def lr_for_round(cfg: TrainConfig, server_round: int, num_rounds: int) -> float:
    """Learning rate of ``server_round`` (1-based) in a run of ``num_rounds`` rounds.

    Parameters
    ----------
    cfg
        ``lr`` (round 1), ``lr_schedule`` (``constant``, ``cosine`` or ``linear``) and
        ``lr_min_ratio`` (the last round gets ``lr * lr_min_ratio``).
    server_round
        Round number, from 1 to ``num_rounds``.
    num_rounds
        Total number of rounds. With a single round the learning rate is ``lr``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the schedule is unknown or the round is outside ``[1, num_rounds]``.

    Examples
    --------
    >>> cfg = TrainConfig(lr=1e-3, lr_schedule="linear", lr_min_ratio=0.1)
    >>> [round(lr_for_round(cfg, r, 3), 6) for r in (1, 2, 3)]
    [0.001, 0.00055, 0.0001]
    """
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule: expected one of {list(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if num_rounds < 1:
        raise ValueError(f"federation.num_rounds: expected >= 1, got {num_rounds}")
    if not 1 <= server_round <= num_rounds:
        raise ValueError(f"server_round: expected a round in [1, {num_rounds}], got {server_round}")
    if cfg.lr_schedule == "constant" or num_rounds == 1:
        return cfg.lr
    progress = (server_round - 1) / (num_rounds - 1)  # 0 at the first round, 1 at the last
    lr_min = cfg.lr * cfg.lr_min_ratio
    if cfg.lr_schedule == "cosine":
        return lr_min + (cfg.lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr - (cfg.lr - lr_min) * progress
