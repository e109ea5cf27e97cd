"""``train.optimizer`` and LoRA+: parameter groups, first-step displacements, device checks."""

from __future__ import annotations

import pytest
import torch

from fedlora.config.load import ConfigError, compose
from fedlora.config.schema import LoraConfig, ModelConfig, TrainConfig
from fedlora.lora.state import expected_shapes, get_lora_state, set_lora_state
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.preflight import client_gpus, device_problems
from fedlora.training.local import train_local
from fedlora.training.optim import build_optimizer, optimizer_device_problem, param_groups
from tests.conftest import random_state

LLAMA = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu")
BERT = ModelConfig(source="tiny:bert", task="classification", device="cpu")
LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
HAS_CUDA = torch.cuda.is_available()


def _llama_with_nonzero_b():
    """B = 0 at init would give A no gradient on the first step; a random state gives both one."""
    model = build_lora_model(LLAMA, LORA)
    set_lora_state(model, random_state(expected_shapes(model), 1, torch.float32))
    return model


def _data(cfg: ModelConfig = LLAMA) -> list[dict]:
    tok = load_tokenizer(cfg)
    texts = ["the cat likes a red ball today.", "a dog sees the blue sky again!"]
    return [{"input_ids": ids, "labels": ids} for ids in tok(texts)["input_ids"]]


def test_ratio_one_is_one_group_of_every_trainable_parameter() -> None:
    model = _llama_with_nonzero_b()
    groups = param_groups(model, 1e-3, 1.0)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in trainable]


def test_loraplus_groups_hold_exactly_the_b_factors_at_ratio_times_lr() -> None:
    model = _llama_with_nonzero_b()
    optimizer = build_optimizer(model, TrainConfig(loraplus_lr_ratio=16.0), lr=1e-3)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"base", "lora_B"}
    named = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    b_names = {named[id(p)] for p in groups["lora_B"]["params"]}
    a_names = {named[id(p)] for p in groups["base"]["params"]}
    assert b_names == {n for n in named.values() if ".lora_B." in n} and b_names
    assert a_names == {n for n in named.values() if ".lora_A." in n} and a_names
    assert groups["lora_B"]["lr"] == pytest.approx(16e-3) and groups["base"]["lr"] == 1e-3


def test_head_stays_at_the_base_lr() -> None:
    model = build_lora_model(BERT, LoraConfig(r=4, target_modules=["query", "value"], train_head=True),
                             num_labels=3)
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 4.0)}
    named = {id(p): n for n, p in model.named_parameters()}
    base = [named[id(p)] for p in groups["base"]["params"]]
    assert any("classifier" in n for n in base) and not any("lora_B" in n for n in base)
    assert all("lora_B" in named[id(p)] for p in groups["lora_B"]["params"])


def test_first_adamw_step_moves_b_ratio_times_farther_than_a() -> None:
    """Adam's first step is lr * g / (|g| + eps), i.e. lr per element: B's step is lr * ratio."""
    ratio, lr = 8.0, 1e-4
    model = _llama_with_nonzero_b()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(local_steps=1, batch_size=2, max_grad_norm=0.0, loraplus_lr_ratio=ratio)
    train_local(model, _data(), _collate, cfg, lr=lr, seed=0)
    steps = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters() if n in before}
    a = torch.cat([s.flatten() for n, s in steps.items() if ".lora_A." in n])
    b = torch.cat([s.flatten() for n, s in steps.items() if ".lora_B." in n])
    assert a.median().item() == pytest.approx(lr, rel=1e-2)
    assert b.median().item() == pytest.approx(lr * ratio, rel=1e-2)


def test_loraplus_changes_the_update_and_ratio_one_does_not() -> None:
    def trained(ratio: float) -> dict[str, torch.Tensor]:
        model = _llama_with_nonzero_b()
        cfg = TrainConfig(local_steps=2, batch_size=2, loraplus_lr_ratio=ratio)
        train_local(model, _data(), _collate, cfg, lr=1e-3, seed=0)
        return {k: v.clone() for k, v in get_lora_state(model).items()}

    plain, again, plus = trained(1.0), trained(1.0), trained(4.0)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert any(not torch.allclose(plain[k], plus[k]) for k in plain if ".lora_B." in k)


def test_adamw_8bit_runs_on_cpu_with_8bit_state() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    big = torch.nn.Linear(128, 64)  # 8192 elements: above bitsandbytes' min_8bit_size (4096)
    optimizer = build_optimizer(big, TrainConfig(optimizer="adamw_8bit"), lr=1e-3)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    assert optimizer.param_groups[0]["weight_decay"] == 0.0  # bitsandbytes' own default is 0.01
    big(torch.randn(4, 128)).pow(2).mean().backward()
    before = big.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, big.weight)
    assert optimizer.state[big.weight]["state1"].dtype == torch.uint8


def test_adamw_8bit_trains_tiny_llama_on_cpu() -> None:
    pytest.importorskip("bitsandbytes")
    model = _llama_with_nonzero_b()
    before = {k: v.clone() for k, v in get_lora_state(model).items()}
    cfg = TrainConfig(local_steps=2, batch_size=2, optimizer="adamw_8bit", loraplus_lr_ratio=2.0)
    result = train_local(model, _data(), _collate, cfg, lr=1e-3, seed=0)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.loss))
    after = get_lora_state(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["paged_adamw_8bit", "paged_adamw_32bit"])
def test_paged_optimizers_refuse_a_cpu_model(name: str) -> None:
    model = _llama_with_nonzero_b()
    with pytest.raises(ValueError, match=rf"train\.optimizer: '{name}' .* needs a CUDA device.*'cpu'"):
        train_local(model, _data(), _collate, TrainConfig(local_steps=1, optimizer=name), lr=1e-3, seed=0)


def test_device_problem_rules() -> None:
    assert optimizer_device_problem("adamw_8bit", "cpu") is None
    assert optimizer_device_problem("adamw", "mps") is None
    assert optimizer_device_problem("paged_adamw_8bit", "cuda") is None
    assert optimizer_device_problem("paged_adamw_8bit", "auto") is None  # decided where the device is known
    assert "needs a CUDA device" in optimizer_device_problem("paged_adamw_32bit", "cpu")
    assert "MPS" in optimizer_device_problem("adamw_8bit", "mps")


def test_config_time_error_for_paged_optimizer_on_a_cpu_model() -> None:
    with pytest.raises(ConfigError) as info:
        compose(["preset=smoke", "train.optimizer=paged_adamw_8bit"])  # tiny_bert: model.device=cpu
    assert any(p.startswith("train.optimizer: 'paged_adamw_8bit'") for p in info.value.problems)
    assert compose(["preset=smoke", "train.optimizer=adamw_8bit"]).train.optimizer == "adamw_8bit"


def test_preflight_device_checks_for_simulated_clients() -> None:
    paged = compose(["preset=llm", "train.optimizer=paged_adamw_8bit"])  # model.device=auto
    problems, _ = device_problems(paged, cuda=False)
    assert problems[0].startswith("train.optimizer: train.optimizer='paged_adamw_8bit' needs a CUDA device")
    assert device_problems(paged, cuda=True) == ([], [])  # client_num_gpus auto: a GPU per worker
    hidden = compose(["preset=llm", "train.optimizer=paged_adamw_8bit", "federation.client_num_gpus=0"])
    problems, _ = device_problems(hidden, cuda=True)  # an explicit 0: Ray hides the GPU
    assert problems and problems[0].startswith("federation.client_num_gpus:")
    with_gpus = compose(["preset=llm", "train.optimizer=paged_adamw_8bit", "federation.client_num_gpus=0.25"])
    assert device_problems(with_gpus, cuda=True) == ([], [])
    plain = compose(["preset=llm"])
    assert device_problems(plain, cuda=False) == ([], [])
    assert device_problems(plain, cuda=True) == ([], [])
    problems, warnings = device_problems(compose(["preset=llm", "federation.client_num_gpus=0"]), cuda=True)
    assert not problems and "clients will train on CPU" in warnings[0]
    problems, _ = device_problems(compose(["preset=llm", "model.device=cuda"]), cuda=False)
    assert problems[0].startswith("model.device: model.device='cuda' needs a CUDA device")
    both = compose(["preset=llm", "model.device=cuda", "train.optimizer=paged_adamw_8bit"])
    problems, _ = device_problems(both, cuda=False)
    assert problems[0].startswith("train.optimizer: model.device='cuda' and train.optimizer=")


def test_client_gpus_auto_gives_a_whole_gpu_only_to_clients_that_use_cuda() -> None:
    auto = compose(["preset=llm"])  # model.device=auto, federation.client_num_gpus=-1
    assert auto.federation.client_num_gpus == -1
    assert client_gpus(auto, cuda=True) == 1.0  # Ray: one worker (one resident base) per GPU
    assert client_gpus(auto, cuda=False) == 0.0
    assert client_gpus(compose(["preset=llm", "model.device=cpu"]), cuda=True) == 0.0
    assert client_gpus(compose(["preset=llm", "model.device=cuda"]), cuda=True) == 1.0
    assert client_gpus(compose(["preset=llm", "federation.client_num_gpus=0.25"]), cuda=False) == 0.25
    assert client_gpus(compose(["preset=llm", "federation.client_num_gpus=0"]), cuda=True) == 0.0
    with pytest.raises(ConfigError, match=r"federation.client_num_gpus: expected >= 0, or -1 for auto"):
        compose(["federation.client_num_gpus=-0.5"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_bitsandbytes_optimizers_train_on_cuda(name: str) -> None:
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cuda", dtype="auto")
    model = build_lora_model(cfg, LORA)
    set_lora_state(model, random_state(expected_shapes(model), 1, torch.float32))
    before = {k: v.clone() for k, v in get_lora_state(model).items()}
    result = train_local(model, _data(cfg), _collate, TrainConfig(local_steps=2, batch_size=2, optimizer=name,
                                                                  loraplus_lr_ratio=4.0), lr=1e-3, seed=0)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.loss))
    assert all(not torch.equal(before[k], v) for k, v in get_lora_state(model).items())


def _collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    from tests.training.conftest import pad_collate

    return pad_collate(examples)
