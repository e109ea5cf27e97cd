"""Evaluation of a (LoRA-wrapped) model on a dataset: classification and causal LM metrics.

Metrics are computed from the logits here rather than by averaging the per-batch ``.loss`` the
model returns, because batch averages are wrong whenever batches differ in size (the last batch)
or, for language modelling, in the number of label tokens: a batch with 3 target tokens must not
count as much as one with 300. Classification loss is a mean over examples, LM loss a mean over
label tokens (``labels != -100``, after the usual one-position shift).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedlora.training.local import model_device, move_batch

IGNORE_INDEX = -100


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Macro-averaged F1, like ``sklearn.metrics.f1_score(average="macro")``.

    The mean of the per-class F1 over every class that occurs in ``y_true`` *or* ``y_pred``; a
    class with no true positives (and some false ones) scores 0.

    Parameters
    ----------
    y_true, y_pred
        Class ids, same length.

    Returns
    -------
    float
        In [0, 1]; 0.0 for empty input.

    Raises
    ------
    ValueError
        If the lengths differ.

    Examples
    --------
    >>> macro_f1([0, 0, 1, 1], [0, 1, 1, 1])  # class 0: F1 2/3, class 1: F1 0.8
    0.7333333333333334
    """
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"macro_f1: y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    classes = sorted(set(y_true) | set(y_pred))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))  # > 0 denominator: c occurs somewhere
    return sum(scores) / len(scores)


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    collate_fn: Callable[[list[dict]], dict[str, Any]],
    *,
    task: str,
    batch_size: int,
) -> dict[str, float]:
    """Evaluate ``model`` on ``dataset`` without gradients.

    Parameters
    ----------
    model
        Sequence classifier (``.logits`` of shape ``(batch, num_labels)``) or causal LM
        (``.logits`` of shape ``(batch, seq, vocab)``).
    dataset
        Examples with ``len`` and integer indexing; every batch from ``collate_fn`` must hold
        ``labels`` (class ids, or token ids with ``-100`` where no loss is taken).
    collate_fn
        Turns a list of examples into a dict of tensors.
    task
        ``"classification"`` or ``"causal_lm"`` (as ``model.task``).
    batch_size
        Evaluation batch size (``train.eval_batch_size``).

    Returns
    -------
    dict of str to float
        classification: ``loss`` (mean cross-entropy per example), ``accuracy``, ``macro_f1``,
        ``num_examples``; causal_lm: ``loss`` (mean per label token), ``perplexity``,
        ``num_tokens``, ``num_examples``.

    Raises
    ------
    ValueError
        For an unknown task, an empty dataset, or (causal LM) no label tokens at all.
    """
    if task not in ("classification", "causal_lm"):
        raise ValueError(f"model.task: expected 'classification' or 'causal_lm', got {task!r}")
    if len(dataset) == 0:
        raise ValueError("evaluate: the evaluation dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task == "classification":
                return _classification(model, loader, device)
            return _causal_lm(model, loader, device)
    finally:
        model.train(was_training)


def _split_labels(batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], torch.Tensor]:
    batch = move_batch(batch, device)
    if "labels" not in batch:
        raise ValueError(f"evaluate: batches need 'labels'; the collator produced {sorted(batch)}")
    labels = batch.pop("labels")  # the model need not compute its own (batch-averaged) loss
    return batch, labels


def _classification(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    loss_sum, y_true, y_pred = 0.0, [], []
    for batch in loader:
        inputs, labels = _split_labels(batch, device)
        logits = model(**inputs).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        y_true += labels.tolist()
        y_pred += logits.argmax(dim=-1).tolist()
    n = len(y_true)
    accuracy = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / n
    return {"loss": loss_sum / n, "accuracy": accuracy, "macro_f1": macro_f1(y_true, y_pred),
            "num_examples": n}


def _causal_lm(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    loss_sum, tokens, examples = 0.0, 0, 0
    for batch in loader:
        inputs, labels = _split_labels(batch, device)
        logits = model(**inputs).logits
        # Position t predicts token t+1.
        shifted_logits = logits[:, :-1, :].float()
        shifted_labels = labels[:, 1:]
        loss_sum += F.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)),
            shifted_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        tokens += int((shifted_labels != IGNORE_INDEX).sum())
        examples += len(labels)
    if tokens == 0:
        raise ValueError("evaluate: no label tokens (all labels are -100); nothing to score")
    loss = loss_sum / tokens
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"loss": loss, "perplexity": perplexity, "num_tokens": tokens, "num_examples": examples}
