"""LoRA state <-> Flower ArrayRecord, with a configurable wire dtype and byte accounting.

numpy has no bfloat16 and Flower's ``Array`` rejects torch bfloat16, so a bfloat16 wire carries
the raw 16 bits as int16 and the receiver reinterprets them. float32 is the default: exact for
fp32 training, and what every strategy's exactness tests assume. Bytes are counted from the
serialized ``Array.data`` buffers, i.e. what the Message actually carries.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord

from fedlora.lora.keys import LoraState
from fedlora.lora.wire import state_from_numpy, state_to_numpy
from fedlora.packing import pack, unpack


def to_arrayrecord(state: LoraState, wire_dtype: str = "float32") -> ArrayRecord:
    """Encode a state as an ArrayRecord of two arrays (:func:`fedlora.packing.pack`: keys and shapes
    kept, tensors cast to ``wire_dtype``)."""
    arrays = {key: Array(nd) for key, nd in pack(state_to_numpy(state, wire_dtype)).items()}
    return ArrayRecord(array_dict=arrays)


def from_arrayrecord(record: ArrayRecord, wire_dtype: str = "float32") -> LoraState:
    """Decode an ArrayRecord into float32 CPU tensors.

    Raises
    ------
    ValueError
        If an array's dtype does not match the declared wire dtype, or a packed record's layout
        does not match its values (:class:`fedlora.packing.PackingError`).
    """
    return state_from_numpy(unpack({key: array.numpy() for key, array in record.items()}), wire_dtype)


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the serialized arrays in a record (what travels in the Message)."""
    return sum(len(array.data) for array in record.values())
