"""Several adapter shapes on one cached base: no reload per rank, exact frozen second adapter."""

import torch

from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.lora.keys import lora_modules
from fedlora.lora.state import get_lora_state, set_lora_state
from fedlora.models.adapters import FROZEN, activate, freeze_lora_a, load_frozen
from fedlora.models.build import base_model_loads, build_lora_model, clear_caches
from tests.conftest import random_state

BERT = ModelConfig(source="tiny:bert", task="classification", device="cpu", max_length=16)
TARGETS = ["query", "value"]


def _shapes(model):
    return {k: tuple(v.shape) for k, v in get_lora_state(model).items()}


def _inputs():
    return {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]),
            "attention_mask": torch.ones(2, 4, dtype=torch.long)}


def test_ranks_share_one_base_model():
    clear_caches()
    lora = LoraConfig(r=4, target_modules=TARGETS)
    m4 = build_lora_model(BERT, lora, rank=4, num_labels=3)
    m8 = build_lora_model(BERT, lora, rank=8, num_labels=3)
    assert m4 is m8 and base_model_loads() == 1
    assert {s[0] for k, s in _shapes(m8).items() if k.endswith("lora_A.weight")} == {8}
    build_lora_model(BERT, lora, rank=4, num_labels=3)
    assert {s[0] for k, s in _shapes(m4).items() if k.endswith("lora_A.weight")} == {4}


def test_rank_pattern_adapter_has_per_module_ranks():
    clear_caches()
    lora = LoraConfig(r=4, target_modules=TARGETS)
    model = build_lora_model(BERT, lora, rank=4, num_labels=3)
    module = next(m for m in lora_modules(get_lora_state(model)) if m.endswith("query"))
    model = build_lora_model(BERT, lora, rank=4, num_labels=3, rank_pattern={module: 6},
                             alpha_pattern={module: 6.0})
    ranks = {m: p.rank for m, p in lora_modules(get_lora_state(model)).items()}
    assert ranks[module] == 6 and sorted(set(ranks.values())) == [4, 6]
    assert base_model_loads() == 1


def test_frozen_adapter_adds_its_update_and_stays_frozen():
    clear_caches()
    lora = LoraConfig(r=4, target_modules=TARGETS, dropout=0.0)
    model = build_lora_model(BERT, lora, rank=4, num_labels=3)
    trainable = random_state(_shapes(model), 1, torch.float32)
    set_lora_state(model, trainable)
    # A frozen update of rank 2 with scaling folded in, applied under the trainable adapter.
    frozen_shapes = {}
    for k, s in _shapes(model).items():
        if k.endswith("lora_A.weight"):
            frozen_shapes[k] = (2, s[1])
        elif k.endswith("lora_B.weight"):
            frozen_shapes[k] = (s[0], 2)
    frozen = random_state(frozen_shapes, 2, torch.float32)
    load_frozen(model, frozen, "classification", TARGETS)
    activate(model, model.active_adapter, with_frozen=True)
    with torch.no_grad():
        both = model(**_inputs()).logits
    # The same result from one adapter whose factors stack [s B_t | B_f] and [A_t ; A_f] (scaling folded).
    trained_name = model.active_adapter
    expected = build_lora_model(BERT, LoraConfig(r=6, alpha=6.0, target_modules=TARGETS, dropout=0.0), rank=6,
                                num_labels=3)
    stacked = {k: v for k, v in trainable.items() if "lora_" not in k}
    for m in lora_modules(frozen):
        a, b = m + ".lora_A.weight", m + ".lora_B.weight"
        stacked[a] = torch.cat([trainable[a], frozen[a]], 0)
        stacked[b] = torch.cat([trainable[b] * (16.0 / 4), frozen[b]], 1)
    set_lora_state(expected, stacked)
    with torch.no_grad():
        reference = expected(**_inputs()).logits
    torch.testing.assert_close(both, reference)
    # Frozen factors never train; the trainable adapter does; freezing A leaves only B.
    build_lora_model(BERT, LoraConfig(r=4, target_modules=TARGETS, dropout=0.0), rank=4, num_labels=3)
    activate(model, trained_name, with_frozen=True)
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads and not any(FROZEN in n for n in grads)
    assert freeze_lora_a(model, trained_name) == 4
    grads = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert grads and all(".lora_B." in n for n in grads)
    activate(model, trained_name)  # next round: A trainable again
    assert any(".lora_A." in n for n, p in model.named_parameters() if p.requires_grad)
