"""The QLoRA recipe's precision: model.dtype=auto is bf16 compute on a bf16 GPU, float32 elsewhere, logged."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from fedlora.config.load import compose
from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.models.build import build_lora_model
from fedlora.models.device import quantization_kwargs, select_dtype

HAS_CUDA = torch.cuda.is_available()


def test_auto_on_cpu_is_float32_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedlora.models.device"):
        assert select_dtype("auto", torch.device("cpu"), "nf4") == torch.float32
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("model.dtype=auto: nf4 compute dtype float32 on cpu")
    assert "needs a CUDA device with bf16 support" in line and "falls back to float32" in line


@pytest.mark.parametrize(("major", "expected", "why"), [
    (9, torch.bfloat16, "supports bf16 natively"),
    (8, torch.bfloat16, "supports bf16 natively"),
    (7, torch.float32, "compute capability 7.5) has no native bf16; falls back to float32"),
])
def test_auto_on_cuda_follows_native_bf16_support(monkeypatch: pytest.MonkeyPatch, caplog, major, expected,
                                                  why) -> None:
    props = SimpleNamespace(name=f"Fake GPU sm{major}", major=major, minor=5)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    with caplog.at_level(logging.INFO, logger="fedlora.models.device"):
        assert select_dtype("auto", torch.device("cuda", 0), "nf4") == expected
    assert why in caplog.records[-1].getMessage()
    assert select_dtype("float32", torch.device("cuda", 0)) == torch.float32  # explicit wins


def test_llm_preset_nf4_path_is_auto_and_compute_dtype_follows_it() -> None:
    cfg = compose(["preset=llm", "model.quantization=nf4"])
    assert cfg.model.dtype == "auto" and cfg.model.quantization == "nf4"
    cpu = torch.device("cpu")
    assert quantization_kwargs(cfg.model, cpu, select_dtype(cfg.model.dtype, cpu, "nf4"))[
        "quantization_config"].bnb_4bit_compute_dtype == torch.float32
    bnb = quantization_kwargs(cfg.model, cpu, torch.bfloat16)["quantization_config"]
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant


def test_nf4_auto_on_cpu_computes_in_float32() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu", dtype="auto", quantization="nf4")
    model = build_lora_model(cfg, LoraConfig(r=4, targets="attention"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {torch.float32}
    assert all(m.weight.quant_type == "nf4" for m in layers)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_nf4_auto_on_cuda_computes_in_bf16_where_native() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cuda", dtype="auto", quantization="nf4")
    model = build_lora_model(cfg, LoraConfig(r=4, targets="all-linear"))
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float32
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {expected}
    assert {p.device.type for p in model.parameters()} == {"cuda"}
