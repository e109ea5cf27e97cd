"""A classification adapter trained with ``lora.train_head=false`` reloads with plain transformers + PEFT.

PEFT's sequence-classification wrapper requires head tensors in the adapter file; before the export
wrote the frozen head, every such run crashed in its own reload check (``KeyError:
'base_model.model.classifier.weight'``) after training. The reference here is the training model
itself (fedlora's cached LoRA model with the state set): the reload must compute the same logits
on a fresh base loaded under *another* seed, so it cannot rely on redrawing the random head.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from fedlora.aggregation import GlobalAdapter
from fedlora.config import compose
from fedlora.export.adapter import load_exported, save_adapter, verify_checksums
from fedlora.lora.state import get_lora_state, set_lora_state
from fedlora.models.build import base_model_loads, build_lora_model
from fedlora.models.shapes import meta_adapter_shapes
from fedlora.models.sources import resolve_model
from tests.conftest import random_state

pytestmark = pytest.mark.usefixtures("private_model_cache")

LABELS = ["a", "b", "c", "d", "e"]  # the tiny BERT checkpoint has 3 labels: this head is newly drawn
HEAD = ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]


def _export(overrides: list[str], out: Path) -> tuple[GlobalAdapter, Path]:
    cfg = compose(["preset=smoke", "lora.train_head=false", *overrides])
    shapes = meta_adapter_shapes(cfg.model, cfg.lora, rank=4, num_labels=len(LABELS))
    assert not set(HEAD) & set(shapes)  # the frozen head is not part of what trains and travels
    adapter = GlobalAdapter(random_state(shapes, 11, torch.float32), 4, cfg.lora.alpha)
    return adapter, save_adapter(cfg, adapter, LABELS, out, {})


def _training_logits(adapter: GlobalAdapter, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    cfg = compose(["preset=smoke", "lora.train_head=false"])
    model = build_lora_model(cfg.model, cfg.lora, rank=4, num_labels=len(LABELS))
    set_lora_state(model, adapter.state)
    head = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    with torch.no_grad():
        return model(input_ids=ids).logits, head


@pytest.mark.parametrize("central_eval", [True, False])
def test_frozen_head_adapter_reloads_with_plain_peft_and_computes_what_trained(
    central_eval: bool, tmp_path: Path
) -> None:
    adapter, out = _export([f"federation.central_eval={str(central_eval).lower()}"], tmp_path / "adapter")
    assert base_model_loads() == 1  # central eval off: one load, at export, for the head's values
    written = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(set(written) - set(adapter.state)) == HEAD
    assert all(torch.equal(written[k], adapter.state[k]) for k in adapter.state)
    config = json.loads((out / "adapter_config.json").read_text())
    assert "classifier" in config["modules_to_save"]
    assert "adapter_model.safetensors" in verify_checksums(out)  # the head went in before the checksums

    ids = torch.randint(5, 90, (3, 12), generator=torch.Generator().manual_seed(1))
    expected, head = _training_logits(adapter, ids)
    assert all(torch.equal(written[k], head[k]) for k in HEAD)
    # what a user types: a fresh base under some other seed (its new head differs), then PEFT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(compose(["preset=smoke"]).model).path, num_labels=len(LABELS),
            ignore_mismatched_sizes=True)
    assert not torch.equal(base.classifier.weight, head["base_model.model.classifier.weight"])
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    model, _, _ = load_exported(out)  # fedlora's own reload (the run's export check) loads it too
    state = get_lora_state(model)
    assert all(torch.equal(state[k], adapter.state[k]) for k in adapter.state)
    # the model card's snippet, run as written (only the adapter path filled in), under another seed
    (code,) = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.S)
    scope: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        exec(code.replace("path/to/this/adapter", str(out)), scope)  # our own card's code
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(input_ids=ids).logits, expected, rtol=0, atol=1e-6)


def test_trained_head_export_is_unchanged_by_the_frozen_head_path(tmp_path: Path) -> None:
    cfg = compose(["preset=smoke", "federation.central_eval=false"])
    shapes = meta_adapter_shapes(cfg.model, cfg.lora, rank=4, num_labels=len(LABELS))
    assert set(HEAD) <= set(shapes)  # a trained head is part of the state itself
    adapter = GlobalAdapter(random_state(shapes, 12, torch.float32), 4, cfg.lora.alpha)
    out = save_adapter(cfg, adapter, LABELS, tmp_path / "adapter", {})
    assert base_model_loads() == 0  # weightless: nothing to add
    written = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(written) == sorted(adapter.state)
