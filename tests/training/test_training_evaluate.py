"""Evaluation metrics against values computed by hand from fixed logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fedlora.config.schema import ModelConfig
from fedlora.models.build import load_base_model, load_tokenizer
from fedlora.training.evaluate import evaluate, macro_f1


class FixedLogits(torch.nn.Module):
    """Returns ``table[input_ids]``: per example (2-D table) or per token (3-D use via ids)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table), requires_grad=False)
        self.seen_labels = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> SimpleNamespace:
        self.seen_labels |= "labels" in kwargs
        logits = self.table[input_ids]  # (batch, seq, classes|vocab)
        return SimpleNamespace(logits=logits[:, 0] if logits.shape[1] == 1 else logits)


def _log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_macro_f1_by_hand() -> None:
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a class that occurs only among the predictions counts (as 0), as in sklearn
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1([3, 3], [3, 3]) == 1.0
    assert macro_f1([], []) == 0.0
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 1"):
        macro_f1([0, 1], [0])


def test_macro_f1_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 4, (200,), generator=rng).tolist()
    y_pred = torch.randint(0, 5, (200,), generator=rng).tolist()
    assert macro_f1(y_true, y_pred) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))


def test_classification_metrics_from_fixed_logits(collate) -> None:
    table = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 0.9, 0.0], [0.2, 0.1, 0.0]]
    labels = [0, 1, 2, 1, 2]  # predictions: 0, 1, 2, 0, 0
    data = [{"input_ids": [i], "labels": y} for i, y in enumerate(labels)]
    model = FixedLogits(table).train()
    out = evaluate(model, data, collate, task="classification", batch_size=2)  # batches of 2, 2, 1
    expected_loss = -sum(_log_softmax(table[i], y) for i, y in enumerate(labels)) / 5
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert out["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp1 fp2 fn0 -> 0.5; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp1 fp0 fn1 -> 2/3
    assert out["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert out["num_examples"] == 5
    assert model.training and not model.seen_labels  # mode restored; labels not given to the model


def test_causal_loss_is_weighted_by_label_tokens(collate) -> None:
    vocab = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.2, -0.5]]  # next-token logits per input token id
    seqs = [
        {"input_ids": [0, 1, 2, 1], "labels": [0, 1, 2, 1]},  # scores 1|0, 2|1, 1|2
        {"input_ids": [2, 0], "labels": [-100, 0]},  # scores 0|2
    ]
    out = evaluate(FixedLogits(vocab), seqs, collate, task="causal_lm", batch_size=1)  # one batch each
    nll = [-_log_softmax(vocab[0], 1), -_log_softmax(vocab[1], 2), -_log_softmax(vocab[2], 1),
           -_log_softmax(vocab[2], 0)]
    assert out["loss"] == pytest.approx(sum(nll) / 4, rel=1e-6)  # per token, not (mean1 + mean2) / 2
    assert out["loss"] != pytest.approx((sum(nll[:3]) / 3 + nll[3]) / 2, rel=1e-3)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    assert out["num_tokens"] == 4 and out["num_examples"] == 2
    padded = evaluate(FixedLogits(vocab), seqs, collate, task="causal_lm", batch_size=2)
    assert padded["loss"] == pytest.approx(out["loss"], rel=1e-6)  # right padding (-100) changes nothing


def test_causal_loss_matches_the_models_own_loss(collate) -> None:
    cfg = ModelConfig(source="tiny:llama", task="causal_lm", device="cpu")
    model, tok = load_base_model(cfg), load_tokenizer(cfg)
    ids = tok("a dog sees the blue sky again!")["input_ids"]
    out = evaluate(model, [{"input_ids": ids, "labels": ids}], collate, task="causal_lm", batch_size=1)
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert out["loss"] == pytest.approx(reference, rel=1e-5)
    assert out["num_tokens"] == len(ids) - 1


def test_evaluate_rejects_bad_input(collate) -> None:
    model = FixedLogits([[0.0, 1.0]])
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [], collate, task="classification", batch_size=2)
    with pytest.raises(ValueError, match=r"model\.task: expected"):
        evaluate(model, [{"input_ids": [0], "labels": 0}], collate, task="regression", batch_size=2)
    with pytest.raises(ValueError, match="no label tokens"):
        unscored = [{"input_ids": [0, 0], "labels": [-100, -100]}]
        evaluate(model, unscored, collate, task="causal_lm", batch_size=2)
