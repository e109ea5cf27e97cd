"""Wire codec: keys, values, dtypes and byte counts."""

import numpy as np
import pytest
import torch

from fedlora.lora.codec import from_arrayrecord, record_nbytes, to_arrayrecord


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
    data = rec["x"].data
    assert record_nbytes(rec) == len(data)
    assert len(data) >= 400 and np.load(__import__("io").BytesIO(data)).shape == (10, 10)


def test_dtype_mismatch_is_reported():
    with pytest.raises(ValueError, match="dtype float32, expected float16"):
        from_arrayrecord(to_arrayrecord(_state(), "float32"), "float16")
