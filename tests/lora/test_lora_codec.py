"""Wire codec: keys, values, dtypes and byte counts."""

import numpy as np
import pytest
import torch

from fedlora.lora.codec import from_arrayrecord, record_nbytes, to_arrayrecord
from fedlora.packing import LAYOUT, PACKED, PackingError, pack, unpack


def _state():
    g = torch.Generator().manual_seed(0)
    return {"a.lora_A.weight": torch.randn(4, 16, generator=g),
            "a.lora_B.weight": torch.randn(8, 4, generator=g),
            "head.bias": torch.randn(3, generator=g)}


def test_float32_round_trip_is_exact_and_keeps_keys():
    state = _state()
    back = from_arrayrecord(to_arrayrecord(state))
    assert list(back) == list(state)
    for k in state:
        assert torch.equal(back[k], state[k])


@pytest.mark.parametrize("wire", ["float16", "bfloat16"])
def test_16bit_wires_halve_the_payload_and_round_like_torch(wire):
    state = _state()
    rec16, rec32 = to_arrayrecord(state, wire), to_arrayrecord(state)
    payload = sum(t.numel() for t in state.values())
    # npy headers are constant per array: the data part must shrink from 4 to 2 bytes per value
    assert record_nbytes(rec32) - record_nbytes(rec16) == 2 * payload
    back = from_arrayrecord(rec16, wire)
    dtype = getattr(torch, wire)
    for k in state:
        assert torch.equal(back[k], state[k].to(dtype).to(torch.float32))


def test_nbytes_counts_serialized_buffers():
    rec = to_arrayrecord({"x": torch.zeros(10, 10)})
    assert sorted(rec) == sorted([LAYOUT, PACKED])  # one adapter, one value array on the wire
    data = rec[PACKED].data
    assert record_nbytes(rec) == len(data) + len(rec[LAYOUT].data)
    assert len(data) >= 400 and np.load(__import__("io").BytesIO(data)).shape == (100,)


def test_many_tensors_travel_as_two_arrays_and_unpack_in_order():
    g = torch.Generator().manual_seed(1)
    state = {f"layers.{i}.q_proj.lora_{ab}.weight": torch.randn(3, 5, generator=g)
             for i in range(40) for ab in "AB"}
    rec = to_arrayrecord(state)
    assert len(rec) == 2
    back = from_arrayrecord(rec)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_a_layout_that_does_not_match_the_values_is_refused():
    arrays = pack({"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)})
    arrays[PACKED] = arrays[PACKED][:-1]
    with pytest.raises(PackingError, match="describes 10 values but 9 arrived"):
        unpack(arrays)
    with pytest.raises(PackingError, match="several dtypes"):
        pack({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float16)})


def test_dtype_mismatch_is_reported():
    with pytest.raises(ValueError, match="dtype float32, expected float16"):
        from_arrayrecord(to_arrayrecord(_state(), "float32"), "float16")
