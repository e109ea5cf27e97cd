"""``lora.targets`` presets: exactly the expected modules per family, on real and meta models alike."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
)

from fedlora.config.load import compose
from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.lora.state import expected_shapes, get_lora_state
from fedlora.models.adapters import adapter_spec
from fedlora.models.build import build_lora_model
from fedlora.models.peft_wrap import wrap_with_lora
from fedlora.models.shapes import meta_adapter_shapes, meta_skeleton, meta_target_modules
from fedlora.models.targets import FAMILIES, compress, preset_modules
from fedlora.preflight import model_problems
from tests.conftest import random_state

BERT = ModelConfig(name="tiny-bert", source="tiny:bert", task="classification", device="cpu")
LLAMA = ModelConfig(name="tiny-llama", source="tiny:llama", task="causal_lm", device="cpu")
CAUSAL = ModelConfig(name="code", source="built-in-code", task="causal_lm", device="cpu")

ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}


def adapted(model: torch.nn.Module) -> set[str]:
    """Full names (under the transformers model) of the modules that carry a LoRA layer."""
    base = model.get_base_model()
    return {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}


def expected_llama(layers: int, leaves: set[str]) -> set[str]:
    parent = {**dict.fromkeys(ATTN, "self_attn"), **dict.fromkeys(MLP, "mlp")}
    return {f"model.layers.{i}.{parent[leaf]}.{leaf}" for i in range(layers) for leaf in leaves}


@pytest.mark.parametrize(("preset", "leaves"),
                         [("attention", ATTN), ("mlp", MLP), ("all-linear", ATTN | MLP)])
def test_llama_presets_adapt_exactly_the_expected_modules(preset: str, leaves: set[str]) -> None:
    model = build_lora_model(LLAMA, LoraConfig(r=4, targets=preset, target_modules=["ignored_by_preset"]))
    assert adapted(model) == expected_llama(2, leaves)
    assert "lm_head" not in {n.rsplit(".", 1)[-1] for n in adapted(model)}


def test_llama_attention_preset_is_the_hand_written_list() -> None:
    preset = meta_adapter_shapes(LLAMA, LoraConfig(r=4, targets="attention"))
    by_hand = meta_adapter_shapes(LLAMA, LoraConfig(r=4, target_modules=sorted(ATTN)))
    assert list(preset.items()) == list(by_hand.items())
    resolved = meta_target_modules(LLAMA, LoraConfig(targets="attention"))
    assert resolved == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_bert_presets_separate_attention_output_from_mlp_output() -> None:
    layers = range(2)
    attention = {f"bert.encoder.layer.{i}.attention.{s}" for i in layers
                 for s in ("self.query", "self.key", "self.value", "output.dense")}
    mlp = {f"bert.encoder.layer.{i}.{s}.dense" for i in layers for s in ("intermediate", "output")}
    for preset, expected in (("attention", attention), ("mlp", mlp), ("all-linear", attention | mlp)):
        model = build_lora_model(BERT, LoraConfig(r=4, targets=preset, train_head=False), num_labels=3)
        assert adapted(model) == expected, preset
    # the pooler and the head are never LoRA targets
    assert not any("pooler" in n or "classifier" in n for n in adapted(model))
    mlp_targets = meta_target_modules(BERT, LoraConfig(targets="mlp"))
    assert mlp_targets == ["intermediate.dense", "layer.0.output.dense", "layer.1.output.dense"]


@pytest.mark.parametrize("preset", ["attention", "mlp", "all-linear"])
@pytest.mark.parametrize(("model_cfg", "num_labels"), [(LLAMA, None), (BERT, 3)], ids=["llama", "bert"])
def test_meta_shapes_agree_with_the_loaded_model(model_cfg: ModelConfig, num_labels: int | None,
                                                 preset: str) -> None:
    lora = LoraConfig(r=4, targets=preset)
    meta = meta_adapter_shapes(model_cfg, lora, num_labels=num_labels)
    real = expected_shapes(build_lora_model(model_cfg, lora, num_labels=num_labels))
    assert list(meta.items()) == list(real.items())


def _tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize(("preset", "suffixes"), [
    ("attention", {"attn.c_attn", "attn.c_proj"}),
    ("mlp", {"mlp.c_fc", "mlp.c_proj"}),
    ("all-linear", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
])
def test_gpt2_presets_tell_the_two_c_proj_apart(preset: str, suffixes: set[str]) -> None:
    lora = LoraConfig(r=4, targets=preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: Conv1D needs fan_in_fan_out, which it sets itself
        model = wrap_with_lora(_tiny_gpt2(), CAUSAL, lora, adapter_spec(lora))
    assert adapted(model) == {f"transformer.h.{i}.{s}" for i in range(2) for s in suffixes}
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def _meta(config) -> torch.nn.Module:
    auto = AutoModelForSequenceClassification if config.model_type == "roberta" else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 64}


@pytest.mark.parametrize("config", [
    MistralConfig(num_key_value_heads=2, **SMALL), Qwen2Config(num_key_value_heads=2, **SMALL),
    Qwen3Config(num_key_value_heads=2, head_dim=8, **SMALL), RobertaConfig(num_labels=2, **SMALL),
], ids=lambda c: c.model_type)
def test_every_listed_family_member_resolves(config) -> None:
    model = _meta(config)
    attention = preset_modules(model, "attention")
    if config.model_type == "roberta":
        assert attention == ["query", "key", "value", "attention.output.dense"]
    else:
        assert attention == ["q_proj", "k_proj", "v_proj", "o_proj"]
        assert preset_modules(model, "mlp") == ["gate_proj", "up_proj", "down_proj"]
    assert config.model_type in {t for f in FAMILIES for t in f.model_types}


def test_unknown_family_is_a_clear_error_naming_families_and_the_fix() -> None:
    model = _meta(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, vocab_size=64))
    with pytest.raises(ValueError) as info:
        preset_modules(model, "attention")
    msg = str(info.value)
    assert msg.startswith("lora.targets: preset 'attention' is defined for the families llama-style")
    for part in ("gpt2", "bert", "'gpt_neox'", "lora.target_modules", "query_key_value"):
        assert part in msg, part


def test_preflight_resolves_presets_without_weights() -> None:
    assert model_problems(compose(["preset=smoke_llm", "lora.targets=all-linear"])) == []
    assert model_problems(compose(["preset=smoke", "lora.targets=mlp"])) == []
    problems = model_problems(compose(["preset=smoke", "lora.targets=attention",
                                       "lora.target_modules=[nope]"]))
    assert problems == []  # the preset replaces the list as written


def test_compress_keeps_peft_suffix_semantics() -> None:
    names = ["a.layer.0.attention.output.dense", "a.layer.0.output.dense", "a.layer.10.output.dense",
             "a.layer.1.output.dense"]
    selected = [names[1], names[3]]
    out = compress(selected, names)
    assert out == ["layer.0.output.dense", "layer.1.output.dense"]
    matched = {n for n in names if any(n == t or n.endswith("." + t) for t in out)}
    assert matched == set(selected)


def test_preset_state_keys_use_the_resolved_modules() -> None:
    model = build_lora_model(BERT, LoraConfig(r=2, targets="mlp", train_head=False), num_labels=3)
    modules = {re.sub(r"\.lora_[AB]\.weight$", "", k) for k in get_lora_state(model)}
    assert modules == {f"base_model.model.bert.encoder.layer.{i}.{s}.dense" for i in range(2)
                       for s in ("intermediate", "output")}
    assert meta_skeleton(BERT, 3).config.model_type == "bert"


def test_frozen_second_adapter_resolves_the_preset_on_the_wrapped_model() -> None:
    """FLoRA's frozen global update (client_task.train_round) targets what the trainable adapter does."""
    from fedlora.models.adapters import FROZEN, load_frozen
    from fedlora.models.targets import resolve_target_modules

    lora = LoraConfig(r=4, targets="mlp", train_head=False)
    model = build_lora_model(BERT, lora, num_labels=3)
    trainable = model.active_adapter
    targets = resolve_target_modules(model, lora)  # on a PeftModel: PEFT's own submodules are skipped
    assert targets == meta_target_modules(BERT, lora)
    state = random_state(expected_shapes(model), 4, torch.float32)
    load_frozen(model, state, BERT.task, targets)
    with_frozen = {n for n, m in model.get_base_model().named_modules()
                   if isinstance(m, LoraLayer) and FROZEN in m.lora_A}
    assert with_frozen == adapted(model) and model.active_adapter == trainable
