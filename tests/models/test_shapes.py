"""Adapter shapes and PEFT exports from a weightless model: identical to a loaded one's, zero loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedlora.aggregation import GlobalAdapter
from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.export.adapter import write_weightless
from fedlora.lora.state import LoraStateError, expected_shapes, get_lora_state, set_lora_state
from fedlora.models.build import LOAD_SEED, base_model_loads, build_lora_model
from fedlora.models.shapes import meta_adapter_shapes, meta_lora_model
from fedlora.models.sources import resolve_model
from tests.conftest import random_state

BERT = ModelConfig(name="tiny-bert", source="tiny:bert", task="classification", device="cpu")
LLAMA = ModelConfig(name="tiny-llama", source="tiny:llama", task="causal_lm", device="cpu")
BERT_TARGETS = ["query", "key", "value", "dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SAFETENSORS = "adapter_model.safetensors"
QUERY0 = "base_model.model.bert.encoder.layer.0.attention.self.query"

# (model, lora, num_labels, rank pattern): the tiny BERT checkpoint has 3 labels, 5 re-sizes its head.
CASES = {
    "bert-head": (BERT, LoraConfig(r=4, alpha=8.0, target_modules=BERT_TARGETS, train_head=True), 5, {}),
    "bert-frozen-head": (BERT, LoraConfig(r=4, alpha=8.0, target_modules=BERT_TARGETS, train_head=False),
                         3, {}),
    "bert-rank-pattern": (BERT, LoraConfig(r=4, alpha=8.0, target_modules=["query", "value"]), 3,
                          {QUERY0: 2}),
    "llama": (LLAMA, LoraConfig(r=8, alpha=16.0, target_modules=LLAMA_TARGETS), None, {}),
}


def _real_shapes(model_cfg: ModelConfig, lora: LoraConfig, num_labels: int | None,
                 pattern: dict[str, int]) -> dict[str, tuple[int, ...]]:
    model = build_lora_model(model_cfg, lora, rank=lora.r, num_labels=num_labels, rank_pattern=pattern)
    return expected_shapes(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_meta_shapes_equal_real_shapes_without_loading(case: str) -> None:
    model_cfg, lora, num_labels, pattern = CASES[case]
    meta = meta_adapter_shapes(model_cfg, lora, rank=lora.r, num_labels=num_labels, rank_pattern=pattern)
    assert base_model_loads() == 0
    real = _real_shapes(model_cfg, lora, num_labels, pattern)
    assert base_model_loads() == 1
    assert list(meta.items()) == list(real.items())  # same keys, same order, same shapes
    heads = [k for k in meta if k.startswith("base_model.model.classifier.")]
    assert bool(heads) == (model_cfg.task == "classification" and lora.train_head)
    if heads:
        assert meta["base_model.model.classifier.weight"][0] == num_labels
    if pattern:
        assert meta[f"{QUERY0}.lora_A.weight"][0] == 2


def test_meta_lora_model_holds_no_weights() -> None:
    model = meta_lora_model(BERT, CASES["bert-head"][1], num_labels=3)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert base_model_loads() == 0


def test_meta_shapes_check_the_config_like_a_real_build() -> None:
    with pytest.raises(ValueError, match=r"lora\.target_modules: \['qkv'\] match no module"):
        meta_adapter_shapes(BERT, LoraConfig(target_modules=["qkv"]), num_labels=3)
    with pytest.raises(ValueError, match="num_labels"):
        meta_adapter_shapes(BERT, LoraConfig(target_modules=BERT_TARGETS))
    assert base_model_loads() == 0


def _pretrained_export(model_cfg: ModelConfig, lora: LoraConfig, adapter: GlobalAdapter,
                       num_labels: int | None, out: Path) -> Path:
    """What the server writes when it holds the loaded model: PEFT's save_pretrained, flattened."""
    model = build_lora_model(model_cfg, lora, rank=adapter.rank, num_labels=num_labels,
                             rank_pattern=adapter.rank_pattern)
    set_lora_state(model, adapter.state)
    model.save_pretrained(str(out), selected_adapters=[model.active_adapter])
    return out / model.active_adapter


def _config(adapter_dir: Path) -> dict:
    """adapter_config.json; target_modules is a set in PEFT, written in hash order."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return {**config, "target_modules": sorted(config["target_modules"])}


def _fresh_base(model_cfg: ModelConfig, num_labels: int | None) -> torch.nn.Module:
    """A real base straight from disk, as a user would load it (the head seeded as in training)."""
    path = resolve_model(model_cfg).path
    if model_cfg.task != "classification":
        return AutoModelForCausalLM.from_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LOAD_SEED)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                  ignore_mismatched_sizes=True)


def _weightless_export(case: str, out: Path) -> GlobalAdapter:
    model_cfg, lora, num_labels, pattern = CASES[case]
    shapes = meta_adapter_shapes(model_cfg, lora, rank=lora.r, num_labels=num_labels, rank_pattern=pattern)
    adapter = GlobalAdapter(random_state(shapes, 7, torch.float32), lora.r, lora.alpha, rank_pattern=pattern)
    out.mkdir()
    write_weightless(model_cfg, lora, adapter, num_labels, out)
    return adapter


@pytest.mark.parametrize("case", sorted(CASES))
def test_weightless_export_writes_what_save_pretrained_writes(case: str, tmp_path: Path) -> None:
    model_cfg, lora, num_labels, _ = CASES[case]
    out = tmp_path / "weightless"
    adapter = _weightless_export(case, out)
    assert base_model_loads() == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", SAFETENSORS]
    reference = _pretrained_export(model_cfg, lora, adapter, num_labels, tmp_path / "pretrained")
    assert _config(out) == _config(reference)
    ours, theirs = load_file(out / SAFETENSORS), load_file(reference / SAFETENSORS)
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)


# PEFT's seq-cls wrapper always wraps the head and then requires head keys in the file, so the bare
# LoRA files of a classification adapter without its head (lora.train_head=false) do not reload with a
# plain PeftModel.from_pretrained -- whichever way they were written (the files above are PEFT's own).
# save_adapter therefore adds the frozen head (write_frozen_head; tests/export/test_frozen_head.py).
FROZEN_HEAD_RELOAD = pytest.mark.xfail(raises=KeyError, strict=True,
                                       reason="PEFT seq-cls reload requires head keys (train_head=false)")


@pytest.mark.parametrize("case", [pytest.param(c, marks=FROZEN_HEAD_RELOAD) if c == "bert-frozen-head" else c
                                  for c in sorted(CASES)])
def test_weightless_export_reloads_exactly_on_a_real_base(case: str, tmp_path: Path) -> None:
    model_cfg, _, num_labels, _ = CASES[case]
    out = tmp_path / "weightless"
    adapter = _weightless_export(case, out)
    reloaded = PeftModel.from_pretrained(_fresh_base(model_cfg, num_labels), str(out))
    state = get_lora_state(reloaded)
    assert sorted(state) == sorted(adapter.state)
    assert all(torch.equal(state[k], adapter.state[k]) for k in adapter.state)
    assert base_model_loads() == 0  # the reload went through transformers, not fedlora's cache


def test_weightless_export_refuses_a_state_of_another_shape(tmp_path: Path) -> None:
    model_cfg, lora, num_labels, _ = CASES["bert-frozen-head"]
    shapes = meta_adapter_shapes(model_cfg, lora, rank=8, num_labels=num_labels)
    adapter = GlobalAdapter(random_state(shapes, 0, torch.float32), 4, lora.alpha)  # rank 8 state, rank 4
    with pytest.raises(LoraStateError, match="wrong shapes"):
        write_weightless(model_cfg, lora, adapter, num_labels, tmp_path)
    assert not (tmp_path / "adapter_model.safetensors").exists()
