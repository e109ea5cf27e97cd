"""The initial global adapter, generated identically in every process from a seed.

A base model's freshly initialised head (and PEFT's LoRA A init) draw from torch's global RNG at
load time, so two processes would start from different adapters. The server instead generates
the round-0 adapter from ``lora.init_seed`` alone and sends it to every client: LoRA A with
PEFT's default Kaiming-uniform init, B = 0 (so the initial update is exactly zero), and any
trainable head with BERT-style N(0, 0.02) weights and zero biases.

DoRA magnitudes (``lora.use_dora``) cannot come from a seed: PEFT initialises them to the column
norms of the base weights, ``||W0||_col`` (B = 0, so that is also ``||W0 + s B A||_col``), and the
initial update is zero only with exactly those values. The caller that holds the base model
passes them (:func:`fedlora.lora.state.base_magnitudes`); without them the magnitude keys are left out, so the
strict loader (:func:`fedlora.lora.state.set_lora_state`) refuses the state rather than zeroing
every adapted layer. They draw nothing from the generator, so the A factors a DoRA run draws are
the ones a plain run draws (FFA-LoRA clients regenerate them without the magnitudes).
"""

from __future__ import annotations

import hashlib
import math

import torch

from fedlora.lora.keys import LoraState, split_key


def initial_state(
    shapes: dict[str, tuple[int, ...]], seed: int, magnitudes: LoraState | None = None
) -> LoraState:
    """A fresh adapter state for ``shapes`` (keys sorted, so the draw order is fixed).

    ``magnitudes``: the DoRA magnitude vectors of ``shapes`` (see the module docstring), copied
    in; ``None`` leaves every magnitude key of ``shapes`` out.

    Raises
    ------
    ValueError
        If ``magnitudes`` misses a magnitude key of ``shapes``, has one ``shapes`` lacks, or a
        shape differs.
    """
    if magnitudes is not None:
        _check_magnitudes(shapes, magnitudes)
    gen = torch.Generator().manual_seed(seed)
    state: LoraState = {}
    for key in sorted(shapes):
        shape = shapes[key]
        kind = split_key(key)[1]
        if kind == "M":
            if magnitudes is not None:
                state[key] = magnitudes[key].detach().to("cpu", torch.float32, copy=True)
        elif kind == "A":
            # kaiming_uniform_(a=sqrt(5)) as in nn.Linear / PEFT: bound = 1 / sqrt(fan_in)
            bound = 1.0 / math.sqrt(shape[1])
            state[key] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
        elif kind == "B" or len(shape) == 1:
            state[key] = torch.zeros(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


def _check_magnitudes(shapes: dict[str, tuple[int, ...]], magnitudes: LoraState) -> None:
    wanted = {k for k in shapes if split_key(k)[1] == "M"}
    missing, unexpected = sorted(wanted - set(magnitudes)), sorted(set(magnitudes) - wanted)
    wrong = [f"{k}: got {tuple(magnitudes[k].shape)}, expected {tuple(shapes[k])}"
             for k in sorted(wanted & set(magnitudes)) if tuple(magnitudes[k].shape) != tuple(shapes[k])]
    if missing or unexpected or wrong:
        raise ValueError(f"initial_state: DoRA magnitudes do not fit the adapter (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]})")


HASH_BITS = 53
"""Hashes fit in 53 bits: a Flower MetricRecord may carry them as float64 without rounding."""


def state_hash(state: LoraState) -> int:
    """A deterministic fingerprint of ``state``: keys, shapes and float32 values, in sorted key order.

    Used to check that every client regenerated the same frozen tensors (FFA-LoRA's shared A)
    without shipping them. Values are hashed as float32 bytes (native byte order: little-endian
    on every platform torch ships for) whatever their dtype or device, so a float64 server copy
    and a float32 client copy of the same draw agree. The SHA-256 digest is cut to
    :data:`HASH_BITS` bits (a non-negative int < 2**53).
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        h.update(f"{key}|{tuple(t.shape)}|".encode())
        h.update(bytes(t.untyped_storage()))
    return int.from_bytes(h.digest()[:8], "little") & ((1 << HASH_BITS) - 1)
