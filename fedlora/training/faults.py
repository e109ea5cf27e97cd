"""Deliberately bad clients for simulations: ``faults=[kind@partition[@round], ...]``.

The server promises (DESIGN.md section 4) to check every reply before it can touch the global
state and to go on while enough good replies remain. These faults let a simulation prove it: after
its local training, a client listed in ``cfg.faults`` corrupts its reply or misbehaves, exactly
once per matching round (every round when the spec has no round). Each kind targets one check of
:mod:`fedlora.strategies.validation`:

``raise``           the ClientApp raises (an error reply)
``nan`` / ``inf``   one element of one tensor is NaN / +inf (finite-values check)
``wrong_shape``     one tensor loses its last column (shape check)
``wrong_rank``      every LoRA factor padded to rank + 1, consistently: a well-formed adapter of
                    the wrong rank (shape-vs-declared-rank check)
``inflated_count``  ``num-examples`` = 10**15 (examples-per-round bound)
``huge_values``     one tensor filled with 3e38, finite in float32 (update-norm bound)
``silence``         no answer within the round: sleeps ``federation.round_timeout_s`` + 5 s, then
                    raises so the simulation worker is freed (round timeout)
``slow``            sleeps min(2 s, round_timeout_s / 4), then answers normally (must be accepted)

No Flower here: the ClientApp stays a thin codec and this works on plain tensors and dicts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from fedlora.config.faults import parse_fault
from fedlora.config.schema import RunConfig
from fedlora.lora.keys import LoraState, split_key
from fedlora.protocol import NUM_EXAMPLES

log = logging.getLogger(__name__)

INFLATED_COUNT = 10**15
HUGE_VALUE = 3.0e38  # below float32's max (3.4e38): finite on the wire, absurd as an update
SILENCE_EXTRA_S = 5.0
SLOW_MAX_S = 2.0

Metrics = dict[str, float | int]


def faults_for(specs: list[str], partition_id: int, server_round: int) -> list[str]:
    """The fault kinds that fire for ``partition_id`` in ``server_round`` (in config order)."""
    out = []
    for spec in specs:
        kind, pid, rnd = parse_fault(spec)
        if pid == partition_id and rnd in (None, server_round):
            out.append(kind)
    return out


def _target(state: LoraState) -> str:
    """The tensor a single-tensor fault corrupts: the first LoRA key in sorted order (a B for
    FFA-LoRA, whose replies hold no A), else the first key. Deterministic, so runs repeat."""
    lora = sorted(k for k in state if split_key(k)[1] is not None)
    return lora[0] if lora else sorted(state)[0]


def _set_one(value: float) -> Callable[[LoraState], LoraState]:
    def corrupt(state: LoraState) -> LoraState:
        key = _target(state)
        t = state[key].clone()
        t.view(-1)[0] = value
        return {**state, key: t}

    return corrupt


def _wrong_shape(state: LoraState) -> LoraState:
    key = next((k for k in sorted(state) if state[k].dim() == 2 and state[k].shape[1] > 1), _target(state))
    return {**state, key: state[key][..., :-1].clone()}


def _wrong_rank(state: LoraState) -> LoraState:
    """Every A gains a zero row and every B a zero column: B A is unchanged, the rank is r + 1."""
    out = dict(state)
    for key, t in state.items():
        kind = split_key(key)[1]
        if kind == "A":
            out[key] = torch.cat([t, t.new_zeros(1, t.shape[1])], dim=0)
        elif kind == "B":
            out[key] = torch.cat([t, t.new_zeros(t.shape[0], 1)], dim=1)
    return out


def _huge(state: LoraState) -> LoraState:
    key = _target(state)
    return {**state, key: torch.full_like(state[key], HUGE_VALUE)}


_STATE_FAULTS: dict[str, Callable[[LoraState], LoraState]] = {
    "nan": _set_one(math.nan),
    "inf": _set_one(math.inf),
    "wrong_shape": _wrong_shape,
    "wrong_rank": _wrong_rank,
    "huge_values": _huge,
}


def apply_faults(
    cfg: RunConfig, partition_id: int, server_round: int, state: LoraState, metrics: Metrics,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[LoraState, Metrics]:
    """Return the reply this client sends after training, corrupted as ``cfg.faults`` asks.

    Without a matching fault the inputs come back unchanged (the same objects). ``raise`` and
    ``silence`` raise :class:`RuntimeError`; ``sleep`` is injectable for tests.
    """
    if not cfg.faults:
        return state, metrics
    timeout = cfg.federation.round_timeout_s
    for kind in faults_for(cfg.faults, partition_id, server_round):
        log.warning("client %d round %d: injecting fault %r", partition_id, server_round, kind)
        if kind == "raise":
            raise RuntimeError(f"injected fault raise (client {partition_id}, round {server_round})")
        if kind == "silence":
            sleep(timeout + SILENCE_EXTRA_S)
            raise RuntimeError(f"injected fault silence (client {partition_id}, round {server_round}): "
                               f"slept {timeout + SILENCE_EXTRA_S:g} s, past the round timeout")
        if kind == "slow":
            sleep(min(SLOW_MAX_S, timeout / 4))
        elif kind == "inflated_count":
            metrics = {**metrics, NUM_EXAMPLES: INFLATED_COUNT}
        else:
            state = _STATE_FAULTS[kind](state)
    return state, metrics
