"""The local training loop: step counting, accumulation, loss bookkeeping, reproducibility, learning."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from fedlora.config.schema import LoraConfig, ModelConfig, TrainConfig
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.training.evaluate import evaluate
from fedlora.training.local import TrainResult, num_steps, train_local

BERT = ModelConfig(source="tiny:bert", task="classification", device="cpu")


class CountingModel(torch.nn.Module):
    """Loss = mean of the batch's ``x`` (+ 0 * w): independent of the weights, so the expected
    example-weighted mean is known in advance whatever the shuffle; records every micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list[float]] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        self.batches.append(x.tolist())
        return SimpleNamespace(loss=x.mean() + 0.0 * self.w.sum())


class LinearRegression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(self.linear.weight, 0.5)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels))


def xy_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor([e["x"] for e in examples]), "labels": torch.tensor([e["y"] for e in examples])}


def _toy_sentiment(n: int = 48) -> list[dict]:
    tok = load_tokenizer(BERT)
    good = ["the cat likes fresh bread today.", "our team finds a small house with joy.", "a child paints!"]
    bad = ["the robot carries the old book?", "my friend answers a long letter.", "the farmer sees"]
    texts = [(good[i % 3], 0) if i % 2 == 0 else (bad[i % 3], 1) for i in range(n)]
    return [{"input_ids": tok(t)["input_ids"], "labels": y} for t, y in texts]


def test_steps_from_local_steps_or_epochs() -> None:
    assert num_steps(TrainConfig(local_steps=7), 1000) == 7
    assert num_steps(TrainConfig(local_steps=0, local_epochs=1.0, batch_size=4, grad_accum=2), 10) == 2
    assert num_steps(TrainConfig(local_steps=0, local_epochs=2.5, batch_size=4, grad_accum=1), 10) == 7
    assert num_steps(TrainConfig(local_steps=0, local_epochs=0.01, batch_size=4), 10) == 1


def test_grad_accum_counts_micro_batches_and_cycles_the_data() -> None:
    model = CountingModel()
    data = [{"x": float(i), "y": 0.0} for i in range(10)]
    cfg = TrainConfig(local_steps=0, local_epochs=1.0, batch_size=4, grad_accum=2)
    result = train_local(model, data, xy_collate, cfg, lr=0.1, seed=0)
    # ceil(10 / (4 * 2)) = 2 steps = 4 micro-batches: 4 + 4 + 2 (end of the pass) + 4 (second pass)
    assert result.steps == 2
    assert [len(b) for b in model.batches] == [4, 4, 2, 4]
    assert result.num_examples == 14
    assert sorted(x for b in model.batches[:3] for x in b) == [float(i) for i in range(10)]


def test_loss_is_the_example_weighted_mean() -> None:
    model = CountingModel()
    data = [{"x": float(v), "y": 0.0} for v in (1, 2, 3, 4, 10)]
    result = train_local(model, data, xy_collate, TrainConfig(local_steps=3, batch_size=2), lr=0.1, seed=3)
    assert [len(b) for b in model.batches] == [2, 2, 1]
    assert result.loss == pytest.approx(20 / 5)  # not the batch mean (which would weight "10" double)
    assert result == TrainResult(loss=result.loss, num_examples=5, steps=3, seconds=result.seconds)


def test_accumulated_micro_batches_equal_one_big_batch() -> None:
    data = [{"x": [float(i), float(i % 3)], "y": float(2 * i - 1)} for i in range(4)]
    big, small = LinearRegression(), LinearRegression()
    one_batch = TrainConfig(local_steps=1, batch_size=4, grad_accum=1, max_grad_norm=0)
    two_micro = TrainConfig(local_steps=1, batch_size=2, grad_accum=2, max_grad_norm=0)
    train_local(big, data, xy_collate, one_batch, lr=0.1, seed=0)
    train_local(small, data, xy_collate, two_micro, lr=0.1, seed=0)
    # one step: same gradient (mean of two equal-size micro-batch means) -> same AdamW update
    assert torch.allclose(big.linear.weight, small.linear.weight, atol=1e-6)
    assert not torch.allclose(big.linear.weight, torch.full((1, 2), 0.5))


def test_empty_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        train_local(CountingModel(), [], xy_collate, TrainConfig(), lr=0.1, seed=0, label="c3")


def test_non_finite_loss_raises() -> None:
    data = [{"x": float("nan"), "y": 0.0}] * 4
    with pytest.raises(FloatingPointError, match=r"\[c1\] non-finite training loss at step 1"):
        cfg = TrainConfig(local_steps=2, batch_size=2)
        train_local(CountingModel(), data, xy_collate, cfg, lr=0.1, seed=0, label="c1")


def test_progress_is_logged_every_log_every_steps(caplog: pytest.LogCaptureFixture) -> None:
    data = [{"x": 1.0, "y": 0.0}] * 4
    with caplog.at_level(logging.INFO, logger="fedlora.training.local"):
        train_local(CountingModel(), data, xy_collate, TrainConfig(local_steps=4, batch_size=2, log_every=2),
                    lr=1e-3, seed=0, label="client 0")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["[client 0] step 2/4 loss 1.000 lr 1.0e-03", "[client 0] step 4/4 loss 1.000 lr 1.0e-03"]


def test_same_seed_same_weights_different_seed_different(collate) -> None:
    model = build_lora_model(BERT, LoraConfig(r=4, dropout=0.1), num_labels=2)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = _toy_sentiment(12)
    cfg = TrainConfig(local_steps=3, batch_size=4)

    def run(seed: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in init:
                    p.copy_(init[n])
        train_local(model, data, collate, cfg, lr=1e-2, seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in init}

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert any(not torch.equal(a[n], init[n]) for n in a)
    assert not model.training


def test_tiny_bert_learns_a_trivial_task(collate) -> None:
    model = build_lora_model(BERT, LoraConfig(r=8, dropout=0.0), num_labels=2)
    data = _toy_sentiment(32)
    before = evaluate(model, data, collate, task="classification", batch_size=32)
    result = train_local(model, data, collate, TrainConfig(local_steps=20, batch_size=8), lr=1e-2, seed=0)
    after = evaluate(model, data, collate, task="classification", batch_size=32)
    assert math.isfinite(result.loss) and result.num_examples == 160
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] == 1.0


def test_tiny_llama_lowers_its_lm_loss(collate) -> None:
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu")
    model = build_lora_model(cfg, LoraConfig(r=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]))
    tok = load_tokenizer(cfg)
    ids = tok("the cat likes a red ball today.")["input_ids"]
    data = [{"input_ids": ids, "labels": ids}] * 8
    before = evaluate(model, data, collate, task="causal_lm", batch_size=8)["loss"]
    train_local(model, data, collate, TrainConfig(local_steps=10, batch_size=4), lr=2e-2, seed=0)
    assert evaluate(model, data, collate, task="causal_lm", batch_size=8)["loss"] < before - 0.2
