"""Strict extract/load and key parsing."""

import pytest
import torch

from fedlora.lora.keys import lora_modules, module_ranks, split_key, uniform_rank
from fedlora.lora.state import LoraStateError, get_lora_state, set_lora_state, states_equal
from tests.conftest import random_state, tiny_peft


def test_keys_are_peft_adapter_name_free(tiny_peft_model):
    state = get_lora_state(tiny_peft_model)
    assert all(".default." not in k for k in state)
    assert {split_key(k)[1] for k in state} == {"A", "B", None}
    assert set(lora_modules(state)) == {"base_model.model.lin", "base_model.model.conv"}
    assert uniform_rank(state) == 4


def test_conv1d_orientation_matches_peft_delta_weight(tiny_peft_model):
    # Prepare: non-zero B so the delta is non-trivial
    shapes = {k: tuple(v.shape) for k, v in get_lora_state(tiny_peft_model).items()}
    state = random_state(shapes, 1, torch.float32)
    set_lora_state(tiny_peft_model, state)
    pairs = lora_modules(state)
    conv = tiny_peft_model.base_model.model.conv
    # Execute: PEFT's own delta for the fan_in_fan_out layer, in the weight's storage orientation
    delta = conv.get_delta_weight("default")
    # Assert: B A (out x in) is that delta transposed, times alpha / r
    ours = 2.0 * pairs["base_model.model.conv"].B @ pairs["base_model.model.conv"].A
    torch.testing.assert_close(delta, ours.T)


def test_extract_load_round_trip_is_identity(tiny_peft_model):
    shapes = {k: tuple(v.shape) for k, v in get_lora_state(tiny_peft_model).items()}
    state = random_state(shapes, 7, torch.float32)
    set_lora_state(tiny_peft_model, state)
    assert states_equal(get_lora_state(tiny_peft_model), state)
    other = tiny_peft()
    set_lora_state(other, get_lora_state(tiny_peft_model))
    x = torch.randn(5, 12)
    torch.testing.assert_close(other(x), tiny_peft_model(x))


def test_unknown_key_is_rejected_with_its_name(tiny_peft_model):
    state = get_lora_state(tiny_peft_model)
    state["base_model.model.lin.lora_C.weight"] = torch.zeros(1)
    with pytest.raises(LoraStateError, match=r"unexpected keys \['base_model.model.lin.lora_C.weight'\]"):
        set_lora_state(tiny_peft_model, state)


def test_missing_key_is_rejected_with_its_name(tiny_peft_model):
    state = get_lora_state(tiny_peft_model)
    del state["base_model.model.conv.lora_B.weight"]
    with pytest.raises(LoraStateError, match=r"missing keys.*conv\.lora_B\.weight"):
        set_lora_state(tiny_peft_model, state)


def test_wrong_rank_shape_is_rejected(tiny_peft_model):
    state = get_lora_state(tiny_peft_model)
    state["base_model.model.lin.lora_A.weight"] = torch.zeros(8, 12)
    with pytest.raises(LoraStateError, match=r"lin.lora_A.weight: got \(8, 12\), expected \(4, 12\)"):
        set_lora_state(tiny_peft_model, state)


def test_module_ranks_and_unpaired_factor():
    state = {"m.lora_A.weight": torch.zeros(3, 5), "m.lora_B.weight": torch.zeros(6, 3)}
    assert module_ranks(state) == {"m": 3}
    with pytest.raises(ValueError, match="only one of lora_A/lora_B"):
        lora_modules({"m.lora_A.weight": torch.zeros(3, 5)})
