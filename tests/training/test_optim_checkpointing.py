"""``train.gradient_checkpointing``: really on while training, and the same update as without it."""

from __future__ import annotations

import pytest
import torch

from fedlora.config.schema import LoraConfig, ModelConfig, TrainConfig
from fedlora.lora.state import expected_shapes, get_lora_state, set_lora_state
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.models.peft_wrap import set_gradient_checkpointing
from fedlora.training.local import train_local
from tests.conftest import random_state
from tests.training.conftest import pad_collate

LLAMA = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu")
# dropout > 0: the recomputed forward must redraw the same dropout masks (checkpoint keeps the RNG state)
LORA = LoraConfig(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
HAS_CUDA = torch.cuda.is_available()


def _data(cfg: ModelConfig) -> list[dict]:
    tok = load_tokenizer(cfg)
    texts = ["the cat likes a red ball today.", "a dog sees the blue sky again!", "our team reads bread"]
    return [{"input_ids": ids, "labels": ids} for ids in tok(texts)["input_ids"]]


def _one_step(cfg: ModelConfig, start: dict[str, torch.Tensor], checkpointing: bool,
              optimizer: str = "adamw") -> tuple[int, dict[str, torch.Tensor]]:
    """One optimizer step from ``start``; the forward calls of layer 0's q_proj; the new LoRA state.

    q_proj, not the layer: torch's non-reentrant recompute stops early, once the last tensor the
    backward needs is recomputed, so the layer's own forward hook does not fire a second time.
    """
    model = build_lora_model(cfg, LORA)
    set_lora_state(model, start)
    calls = []
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    train_cfg = TrainConfig(local_steps=1, batch_size=3, gradient_checkpointing=checkpointing,
                            optimizer=optimizer, loraplus_lr_ratio=2.0)
    try:
        train_local(model, _data(cfg), pad_collate, train_cfg, lr=1e-3, seed=7)
    finally:
        handle.remove()
    return len(calls), {k: v.detach().float().cpu().clone() for k, v in get_lora_state(model).items()}


def _start(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return random_state(expected_shapes(build_lora_model(cfg, LORA)), 3, torch.float32)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


def test_checkpointing_gives_the_same_lora_update_on_tiny_llama() -> None:
    start = _start(LLAMA)
    plain_calls, plain = _one_step(LLAMA, start, checkpointing=False)
    ckpt_calls, ckpt = _one_step(LLAMA, start, checkpointing=True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # checkpointing recomputes the block in backward
    _assert_close(plain, ckpt, 1e-6)
    assert any(not torch.equal(plain[k], start[k]) for k in start)  # the step did something
    again_calls, again = _one_step(LLAMA, start, checkpointing=False)  # switched off on the cached model
    assert again_calls == 1
    _assert_close(plain, again, 0.0)


def test_switch_is_idempotent_and_leaves_eval_alone() -> None:
    model = build_lora_model(LLAMA, LORA)
    base = model.get_base_model()
    assert set_gradient_checkpointing(model, True) is True
    assert set_gradient_checkpointing(model, True) is False
    assert base.is_activation_checkpointing
    calls = []
    handle = base.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))
    handle.remove()
    assert calls == [1]
    assert set_gradient_checkpointing(model, False) is True and not base.is_activation_checkpointing


def test_checkpointing_on_a_non_transformers_model_is_a_clear_error() -> None:
    net = torch.nn.Linear(2, 1)
    data = [{"input_ids": [1], "labels": [1]}]
    with pytest.raises(ValueError, match=r"train\.gradient_checkpointing: Linear is not a transformers"):
        train_local(net, data, pad_collate, TrainConfig(local_steps=1, gradient_checkpointing=True), lr=1e-3,
                    seed=0)


def test_checkpointing_with_nf4_trains_the_same_on_cpu() -> None:
    pytest.importorskip("bitsandbytes")
    nf4 = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu", quantization="nf4")
    start = _start(nf4)
    plain_calls, plain = _one_step(nf4, start, checkpointing=False)
    ckpt_calls, ckpt = _one_step(nf4, start, checkpointing=True)
    assert (plain_calls, ckpt_calls) == (1, 2)
    _assert_close(plain, ckpt, 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_qlora_recipe_on_cuda_bf16_compute_checkpointing_paged_optimizer() -> None:
    """The docs/qlora-recipe.md path: NF4 + bf16 compute (dtype auto) + checkpointing + paged AdamW."""
    bnb = pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cuda", dtype="auto", quantization="nf4")
    model = build_lora_model(cfg, LORA)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float32
    assert layers and {m.compute_dtype for m in layers} == {expected}
    start = _start(cfg)
    plain_calls, plain = _one_step(cfg, start, checkpointing=False, optimizer="paged_adamw_8bit")
    ckpt_calls, ckpt = _one_step(cfg, start, checkpointing=True, optimizer="paged_adamw_8bit")
    assert (plain_calls, ckpt_calls) == (1, 2)
    _assert_close(plain, ckpt, 1e-3 if expected == torch.bfloat16 else 1e-5)  # GPU kernels: not bitwise
