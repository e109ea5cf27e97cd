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


def evaluates(server_round: int, last_round: int, eval_every: int = 1) -> bool:
    """Whether the server evaluates the global adapter after ``server_round`` (``federation.eval_every``).

    Round 0 (the untrained baseline), every ``eval_every``-th round and the run's last round
    (``last_round``; a privacy budget may end a run before ``federation.num_rounds``) are
    evaluated. The schedule is a function of the absolute round, so a resumed run keeps it.

    Examples
    --------
    >>> [r for r in range(6) if evaluates(r, 5, 2)]
    [0, 2, 4, 5]
    """
    if eval_every < 1:
        raise ValueError(f"federation.eval_every: expected an integer >= 1, got {eval_every}")
    return server_round == 0 or server_round % eval_every == 0 or server_round == last_round


def eval_rounds(num_rounds: int, eval_every: int = 1) -> list[int]:
    """The rounds a run of ``num_rounds`` evaluates (see :func:`evaluates`)."""
    return [r for r in range(num_rounds + 1) if evaluates(r, num_rounds, eval_every)]
