"""The Gaussian mechanism on LoRA updates: clip in the space a strategy aggregates, then add noise.

A client's *update* is its reply minus the state it started from (the payload it received), over
every tensor it uploads: A and B for FedIT and HetLoRA, B alone for FFA-LoRA (A is frozen and
never sent), plus a trainable head or DoRA magnitudes when those travel. Strategies that fold the
client's scaling ``s_k`` into B before averaging (``ffa``, ``hetlora``: ranks may differ) aggregate
``s_k * B``, so B's part of the norm is weighted by ``b_weight = s_k`` there
(:meth:`fedlora.aggregation.Aggregator.dp_b_weight`); the clipping bound and the noise then hold in
exactly the space the server averages, whatever the client's rank.
"""

from __future__ import annotations

import hashlib
import math
import secrets

import torch

from fedlora.lora.keys import LoraState, split_key


def _weight(key: str, b_weight: float) -> float:
    return b_weight if split_key(key)[1] == "B" else 1.0


def update_norm(state: LoraState, start: LoraState, b_weight: float = 1.0) -> float:
    """L2 norm of ``state - start`` over ``state``'s keys, B's part multiplied by ``b_weight``.

    Raises
    ------
    KeyError
        If ``start`` lacks a key of ``state`` (the reply must be an update of what was sent).
    """
    total = 0.0
    for key, value in state.items():
        delta = value.double() - start[key].double()
        total += (_weight(key, b_weight) ** 2) * float(delta.pow(2).sum())
    return math.sqrt(total)


def clip_update(state: LoraState, start: LoraState, bound: float, b_weight: float = 1.0
                ) -> tuple[LoraState, float]:
    """``start + min(1, bound / ||state - start||) * (state - start)``, and the norm before clipping.

    The result's weighted update norm (see :func:`update_norm`) is at most ``bound``; an update
    already inside the ball is returned unchanged (copies).
    """
    norm = update_norm(state, start, b_weight)
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    clipped = {}
    for key, value in state.items():
        base = start[key].to(value.dtype)
        clipped[key] = value.clone() if factor == 1.0 else base + factor * (value - base)
    return clipped, norm


def noise_generator(seed: int, *salt: object) -> torch.Generator:
    """A CPU generator for the noise: fresh OS entropy when ``seed`` < 0 (``privacy.noise_seed=-1``,
    the default), else derived from ``seed`` and ``salt`` (round, client) for reproducible experiments."""
    gen = torch.Generator()
    if seed < 0:
        gen.manual_seed(secrets.randbits(63))
    else:
        digest = hashlib.sha256(repr((seed, *salt)).encode()).digest()
        gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def gaussian_like(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``N(0, std^2)`` noise of ``tensor``'s shape and dtype (drawn in float32 on the CPU, so the same
    seed gives the same noise on any device)."""
    noise = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float32) * std
    return noise.to(device=tensor.device, dtype=tensor.dtype)


def privatize_local(state: LoraState, start: LoraState, *, bound: float, noise_multiplier: float,
                    b_weight: float, generator: torch.Generator) -> tuple[LoraState, float]:
    """A client's own Gaussian mechanism (``privacy=local``): clip its update to ``bound`` and add
    noise of std ``noise_multiplier * bound`` in the aggregated space (B's noise divided by
    ``b_weight``, since the server multiplies B by it). Returns the released state and the update's
    norm before clipping."""
    clipped, norm = clip_update(state, start, bound, b_weight)
    std = noise_multiplier * bound
    out = {key: value + gaussian_like(value, std / _weight(key, b_weight), generator)
           for key, value in clipped.items()}
    return out, norm
