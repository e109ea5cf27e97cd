"""One client's local training in a federated round.

Deliberately a plain loop rather than ``transformers.Trainer``: a round is a few dozen optimizer
steps on a model that is reused across clients and rounds, and the loop must be reproducible
(the same ``seed`` gives the same update, so federated runs can be compared across strategies) and
cheap to start. The optimizer is created fresh every round because a simulation worker serves a
different client each time and clients keep no state between rounds
(:func:`fedlora.training.optim.build_optimizer`: ``train.optimizer``, LoRA+ parameter groups).
``train.gradient_checkpointing`` is applied to the (cached) model at the start of every call.

The step count is fixed up front (``train.local_steps``, or enough steps for
``train.local_epochs`` passes), so clients with more data do not automatically do more work; the
examples they actually saw are reported so the server can weight their updates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from fedlora.config.schema import TrainConfig
from fedlora.training.optim import build_optimizer, describe

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Summary of one call to :func:`train_local`.

    Attributes
    ----------
    loss
        Mean training loss over all micro-batches of all optimizer steps, weighted by examples.
    num_examples
        Examples actually seen, counting repeats when the data was cycled.
    steps
        Optimizer steps taken.
    seconds
        Wall-clock time of the loop.
    """

    loss: float
    num_examples: int
    steps: int
    seconds: float


def num_steps(cfg: TrainConfig, num_examples: int) -> int:
    """Optimizer steps for one round: ``local_steps``, or enough for ``local_epochs`` passes.

    Parameters
    ----------
    cfg
        Training configuration.
    num_examples
        Size of the local dataset.

    Returns
    -------
    int
        At least 1.
    """
    if cfg.local_steps > 0:
        return cfg.local_steps
    if cfg.local_epochs <= 0:
        raise ValueError("train.local_steps: set local_steps > 0 or local_epochs > 0")
    return max(1, math.ceil(cfg.local_epochs * num_examples / (cfg.batch_size * cfg.grad_accum)))


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (where batches must go)."""
    return next(model.parameters()).device


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (other values are kept as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of examples in a collated batch (first dimension of ``input_ids`` or ``labels``)."""
    for key in ("input_ids", "labels"):
        if key in batch:
            return len(batch[key])
    return len(next(iter(batch.values())))


def _cycle(loader: DataLoader) -> Iterator[dict[str, Any]]:
    # Each new pass draws a new permutation from the loader's seeded generator.
    while True:
        yield from loader


def train_local(
    model: torch.nn.Module,
    dataset: Sequence[dict] | datasets.Dataset,
    collate_fn: Callable[[list[dict]], dict[str, Any]],
    cfg: TrainConfig,
    *,
    lr: float,
    seed: int,
    label: str = "",
) -> TrainResult:
    """Train the trainable parameters of ``model`` on ``dataset`` for one round.

    Parameters
    ----------
    model
        A model whose forward returns ``.loss`` when the batch contains ``labels``; only
        parameters with ``requires_grad`` are optimized (the LoRA adapter, maybe the head).
    dataset
        The client's examples; anything with ``len`` and integer indexing.
    collate_fn
        Turns a list of examples into a dict of tensors (``input_ids``, ``attention_mask``,
        ``labels`` ...).
    cfg
        ``local_steps``/``local_epochs``, ``batch_size``, ``grad_accum``, ``weight_decay``,
        ``max_grad_norm``, ``log_every``, ``optimizer``, ``loraplus_lr_ratio`` and
        ``gradient_checkpointing``.
    lr
        Learning rate of this round (see :func:`fedlora.training.schedule.lr_for_round`); LoRA B
        factors train at ``lr * cfg.loraplus_lr_ratio``.
    seed
        Seeds the shuffle and dropout: the same seed and initial weights give the same result.
    label
        Prefix for log lines, e.g. the client id.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If the dataset is empty, the model has nothing to train, or ``train.optimizer`` /
        ``train.gradient_checkpointing`` cannot run on this model or device.
    FloatingPointError
        If the loss becomes NaN or infinite (an update like that would poison aggregation).
    """
    if len(dataset) == 0:
        raise ValueError(f"[{label}] train_local: the local dataset is empty; nothing to train on")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"[{label}] train_local: the model has no parameters with requires_grad=True")
    start = time.perf_counter()
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)  # shuffle order
    sampler = RandomSampler(dataset, generator=generator)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_fn)
    batches = _cycle(loader)
    steps = num_steps(cfg, len(dataset))
    device = model_device(model)
    optimizer = build_optimizer(model, cfg, lr)
    if hasattr(model, "get_base_model") or hasattr(model, "activation_checkpointing_enable"):
        from fedlora.models.peft_wrap import set_gradient_checkpointing

        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        raise ValueError(f"[{label}] train.gradient_checkpointing: {type(model).__name__} is not a "
                         "transformers model; set it to false")
    if cfg.optimizer != "adamw" or cfg.loraplus_lr_ratio != 1.0:
        logger.info("[%s] optimizer %s", label, describe(optimizer))

    model.train()
    loss_sum, seen = 0.0, 0  # over the whole call
    window_loss, window_seen = 0.0, 0  # since the last log line
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum):
            batch = move_batch(next(batches), device)
            n = batch_size_of(batch)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                model.eval()
                raise FloatingPointError(f"[{label}] non-finite training loss at step {step} (lr={lr:.1e}); "
                                         "lower train.lr or set train.max_grad_norm > 0")
            (loss / cfg.grad_accum).backward()
            window_loss += loss.item() * n
            window_seen += n
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        if step % max(cfg.log_every, 1) == 0 or step == steps:
            if cfg.log_every > 0:
                window_mean = window_loss / window_seen
                logger.info("[%s] step %s/%s loss %.3f lr %.1e", label, step, steps, window_mean, lr)
            loss_sum, seen = loss_sum + window_loss, seen + window_seen
            window_loss, window_seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    seconds = time.perf_counter() - start
    logger.debug("[%s] trained %s steps on %s examples in %.2f s", label, steps, seen, seconds)
    return TrainResult(loss=loss_sum / seen, num_examples=seen, steps=steps, seconds=seconds)
