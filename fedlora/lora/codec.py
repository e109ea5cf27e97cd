"""LoRA state <-> Flower ArrayRecord, with a configurable wire dtype and byte accounting.

numpy has no bfloat16 and Flower's ``Array`` rejects torch bfloat16, so a bfloat16 wire carries
the raw 16 bits as int16 and the receiver reinterprets them. float32 is the default: exact for
fp32 training, and what every strategy's exactness tests assume. Bytes are counted from the
serialized ``Array.data`` buffers, i.e. what the Message actually carries.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedlora.lora.keys import LoraState

_WIRE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_arrayrecord(state: LoraState, wire_dtype: str = "float32") -> ArrayRecord:
    """Encode a state as an ArrayRecord (keys kept, tensors cast to ``wire_dtype``)."""
    if wire_dtype not in _WIRE_TORCH:
        raise ValueError(f"federation.wire_dtype: expected one of {sorted(_WIRE_TORCH)}, got {wire_dtype!r}")
    arrays: dict[str, Array] = {}
    for key, tensor in state.items():
        t = tensor.detach().to("cpu").to(_WIRE_TORCH[wire_dtype]).contiguous()
        nd = t.view(torch.int16).numpy() if wire_dtype == "bfloat16" else t.numpy()
        arrays[key] = Array(np.ascontiguousarray(nd))
    return ArrayRecord(array_dict=arrays)


def from_arrayrecord(record: ArrayRecord, wire_dtype: str = "float32") -> LoraState:
    """Decode an ArrayRecord into float32 CPU tensors.

    Raises
    ------
    ValueError
        If an array's dtype does not match the declared wire dtype.
    """
    expected = np.int16 if wire_dtype == "bfloat16" else np.dtype(wire_dtype)
    state: LoraState = {}
    for key, array in record.items():
        nd = array.numpy()
        if nd.dtype != expected:
            raise ValueError(f"array {key!r} has dtype {nd.dtype}, expected {wire_dtype} on the wire")
        t = torch.from_numpy(nd.copy())
        if wire_dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        state[key] = t.to(torch.float32)
    return state


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the serialized arrays in a record (what travels in the Message)."""
    return sum(len(array.data) for array in record.values())
