"""Server-side evaluation of the global adapter on the central held-out test set.

The server holds one PeftModel per adapter rank (cached by :mod:`fedlora.models`), loads the
global adapter into it strictly, and evaluates. The same code scores the exported adapter after
it is reloaded from disk, so the two numbers are comparable digit for digit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config.schema import RunConfig
from fedlora.data import label_names, load_central_test, make_collator, tokenize_dataset
from fedlora.lora.state import expected_shapes, set_lora_state
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.training.evaluate import evaluate


class CentralEvaluator:
    """Evaluates adapters on the central test split of ``cfg.data``."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        task = cfg.model.task
        labels = label_names(cfg.data, task, cfg.federation.num_clients)
        self.labels: list[str] | None = list(labels) if labels else None
        self.tokenizer = load_tokenizer(cfg.model)
        test = load_central_test(cfg.data, task, cfg.federation.num_clients)
        self.dataset = tokenize_dataset(test, self.tokenizer, task, cfg.model.max_length)
        self.collate = make_collator(self.tokenizer, task)

    @property
    def num_labels(self) -> int | None:
        return len(self.labels) if self.labels else None

    def model_for(
        self, rank: int, alpha: float,
        rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
    ) -> Any:
        lora = dataclasses.replace(self.cfg.lora, alpha=alpha)
        return build_lora_model(self.cfg.model, lora, rank=rank, num_labels=self.num_labels,
                                rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)

    def adapter_shapes(self, rank: int) -> dict[str, tuple[int, ...]]:
        """Keys and shapes of an adapter of this rank on the configured model."""
        return expected_shapes(self.model_for(rank, self.cfg.lora.alpha))

    def evaluate(self, adapter: GlobalAdapter) -> dict[str, float]:
        model = self.model_for(adapter.rank, adapter.alpha, adapter.rank_pattern, adapter.alpha_pattern)
        set_lora_state(model, adapter.state)
        return self.evaluate_model(model)

    def evaluate_model(self, model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluate(
            model, self.dataset, self.collate, task=self.cfg.model.task,
            batch_size=self.cfg.train.eval_batch_size,
        )
        return {k: float(v) for k, v in metrics.items() if k not in ("num_examples", "num_tokens")}
