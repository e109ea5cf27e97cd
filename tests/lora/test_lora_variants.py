"""rsLoRA and DoRA at the adapter-state level: PEFT's magnitude keys, their checks, their initial
value (the base weights' column norms, computed here by hand), and the adapter specs that carry
``use_rslora``/``use_dora`` to PEFT."""

import dataclasses
import warnings

import pytest
import torch

from fedlora.config import compose
from fedlora.lora.init import initial_state
from fedlora.lora.keys import extra_keys, lora_modules, m_key, magnitude_keys, split_key
from fedlora.lora.state import LoraStateError, base_magnitudes, get_lora_state, set_lora_state
from fedlora.models.adapters import adapter_spec, folded_spec, lora_config
from tests.conftest import TinyNet, random_state, tiny_peft

LIN, CONV = "base_model.model.lin", "base_model.model.conv"


def _dora_net(r: int = 4):
    """TinyNet (a Linear and a GPT-2 Conv1D) with a DoRA adapter and a trained head."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=8.0, target_modules=["lin", "conv"], modules_to_save=["head"],
                     lora_dropout=0.0, use_dora=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(TinyNet(), cfg)


def test_peft_names_the_magnitudes_as_keys_expects():
    state = get_lora_state(_dora_net())
    assert {split_key(k)[1] for k in state} == {"A", "B", "M", None}
    assert magnitude_keys(state) == [m_key(CONV), m_key(LIN)] == [f"{CONV}.lora_magnitude_vector",
                                                                   f"{LIN}.lora_magnitude_vector"]
    assert state[m_key(LIN)].shape == (10,) and state[m_key(CONV)].shape == (9,)  # one per output feature
    assert set(magnitude_keys(state)) <= set(extra_keys(state))  # averaged like the head
    assert set(lora_modules(state)) == {LIN, CONV}


def test_a_stray_or_misshaped_magnitude_is_refused():
    state = get_lora_state(_dora_net())
    with pytest.raises(ValueError, match=r"lora_magnitude_vector has shape \(9,\), expected \(10,\)"):
        lora_modules({**state, m_key(LIN): torch.ones(9)})
    with pytest.raises(ValueError, match=r"lora_magnitude_vector for modules without lora_A/lora_B: \['x'\]"):
        lora_modules({**state, m_key("x"): torch.ones(3)})


def test_base_magnitudes_are_the_column_norms_peft_starts_from():
    model = _dora_net()
    fresh = get_lora_state(model)  # PEFT's own init: ||W0 + s B A||_col with B = 0
    base = model.base_model.model
    by_hand = {m_key(LIN): torch.linalg.norm(base.lin.base_layer.weight, dim=1),  # Linear: (out, in)
               m_key(CONV): torch.linalg.norm(base.conv.base_layer.weight, dim=0)}  # Conv1D stores (in, out)
    # overwrite the adapter (as a cached model that served a run would be): the base is what counts
    set_lora_state(model, random_state({k: tuple(v.shape) for k, v in fresh.items()}, 3, torch.float32))
    got = base_magnitudes(model)
    assert set(got) == set(by_hand)
    for k, want in by_hand.items():
        torch.testing.assert_close(got[k], want.detach(), rtol=0, atol=0)
        torch.testing.assert_close(got[k], fresh[k], rtol=0, atol=0)
    with pytest.raises(LoraStateError, match="not a DoRA adapter"):
        base_magnitudes(tiny_peft())


def test_dora_state_loads_strictly_and_round_trips():
    model, other = _dora_net(), _dora_net()
    shapes = {k: tuple(v.shape) for k, v in get_lora_state(model).items()}
    state = random_state(shapes, 5, torch.float32)
    state = {k: v.abs() + 0.5 if k in magnitude_keys(state) else v for k, v in state.items()}
    set_lora_state(model, state)
    back = get_lora_state(model)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    set_lora_state(other, back)
    x = torch.randn(4, 12)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    with pytest.raises(LoraStateError, match=r"missing keys.*lin\.lora_magnitude_vector"):
        set_lora_state(other, {k: v for k, v in state.items() if k != m_key(LIN)})


def test_initial_state_draws_the_same_factors_with_or_without_magnitudes():
    plain = {"m.lora_A.weight": (4, 6), "m.lora_B.weight": (5, 4), "head.weight": (3, 5),
             "n.lora_A.weight": (4, 5), "n.lora_B.weight": (2, 4)}
    dora = {**plain, "m.lora_magnitude_vector": (5,), "n.lora_magnitude_vector": (2,)}
    mags = {"m.lora_magnitude_vector": torch.arange(5.0) + 1,
            "n.lora_magnitude_vector": torch.tensor([3.0, 4.0])}
    want = initial_state(plain, 7)
    without = initial_state(dora, 7)  # what an FFA client regenerates: factors only, magnitudes left out
    with_m = initial_state(dora, 7, mags)
    assert set(without) == set(plain) and all(torch.equal(without[k], want[k]) for k in plain)
    assert set(with_m) == set(dora) and all(torch.equal(with_m[k], want[k]) for k in plain)
    assert all(torch.equal(with_m[k], v) for k, v in mags.items())
    assert with_m["m.lora_magnitude_vector"] is not mags["m.lora_magnitude_vector"]  # a copy
    with pytest.raises(ValueError, match=r"missing \['n.lora_magnitude_vector'\]"):
        initial_state(dora, 7, {"m.lora_magnitude_vector": mags["m.lora_magnitude_vector"]})
    with pytest.raises(ValueError, match=r"wrong shapes .*m.lora_magnitude_vector: got \(4,\), expected \(5"):
        initial_state(dora, 7, {**mags, "m.lora_magnitude_vector": torch.ones(4)})


def test_adapter_specs_carry_the_variant_to_peft():
    lora = compose(["preset=smoke_llm"]).lora
    plain = adapter_spec(lora, 4)
    rs = adapter_spec(dataclasses.replace(lora, use_rslora=True), 4)
    dora = adapter_spec(dataclasses.replace(lora, use_dora=True, use_rslora=True), 4)
    assert len({plain.name, rs.name, dora.name}) == 3  # a cached model keeps them as separate adapters
    for spec, flags in ((plain, (False, False)), (rs, (True, False)), (dora, (True, True))):
        config = lora_config(spec, "causal_lm", ["q_proj"])
        assert (config.use_rslora, config.use_dora) == flags
    folded = folded_spec({"m.lora_A.weight": torch.zeros(3, 4), "m.lora_B.weight": torch.zeros(2, 3)})
    assert not (folded.use_rslora or folded.use_dora)  # the frozen adapter: plain LoRA, scaling 1
