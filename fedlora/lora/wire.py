"""LoRA state <-> plain numpy arrays in the wire dtype, without Flower.

Flower's ``Array`` wraps a numpy array, and the resident node worker (:mod:`fedlora.deploy.worker`)
receives the same arrays over a local socket without Flower, so the dtype rules live here once:
numpy has no bfloat16, so a bfloat16 wire carries the raw 16 bits as int16 and the receiver
reinterprets them; float32 is exact for fp32 training.
"""

from __future__ import annotations

import numpy as np
import torch

from fedlora.lora.keys import LoraState

WIRE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_wire_dtype(wire_dtype: str) -> None:
    """Raise ValueError naming ``federation.wire_dtype`` for an unknown wire dtype."""
    if wire_dtype not in WIRE_TORCH:
        raise ValueError(f"federation.wire_dtype: expected one of {sorted(WIRE_TORCH)}, got {wire_dtype!r}")


def state_to_numpy(state: LoraState, wire_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Each tensor as a contiguous CPU numpy array in ``wire_dtype`` (bfloat16 as int16 bits)."""
    check_wire_dtype(wire_dtype)
    out: dict[str, np.ndarray] = {}
    for key, tensor in state.items():
        t = tensor.detach().to("cpu").to(WIRE_TORCH[wire_dtype]).contiguous()
        nd = t.view(torch.int16).numpy() if wire_dtype == "bfloat16" else t.numpy()
        out[key] = np.ascontiguousarray(nd)
    return out


def state_from_numpy(arrays: dict[str, np.ndarray], wire_dtype: str = "float32") -> LoraState:
    """Decode numpy arrays in ``wire_dtype`` into float32 CPU tensors.

    Raises
    ------
    ValueError
        If an array's dtype does not match the declared wire dtype.
    """
    check_wire_dtype(wire_dtype)
    expected = np.int16 if wire_dtype == "bfloat16" else np.dtype(wire_dtype)
    state: LoraState = {}
    for key, nd in arrays.items():
        if nd.dtype != expected:
            raise ValueError(f"array {key!r} has dtype {nd.dtype}, expected {wire_dtype} on the wire")
        t = torch.from_numpy(nd.copy())
        if wire_dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        state[key] = t.to(torch.float32)
    return state
