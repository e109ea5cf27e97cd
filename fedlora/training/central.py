"""Server-side evaluation of the global adapter on the central held-out test set.

The server holds one PeftModel per adapter rank (cached by :mod:`fedlora.models`), loads the
global adapter into it strictly, and evaluates. The same code scores the exported adapter after
it is reloaded from disk, so the two numbers are comparable digit for digit.

With ``federation.central_eval=false`` nothing here loads the base model: the server needs only
the adapter's shapes, which come from a weightless copy (:mod:`fedlora.models.shapes`), so a
SuperLink host without a GPU or the weights can run the federation.

For a causal LM with ``federation.generate_samples > 0`` each evaluation also answers a fixed
sample of test prompts greedily (:mod:`fedlora.training.generation`) and adds ``gen_exact_match``,
``gen_rouge_l`` and ``gen_token_f1`` to the metrics; given a round and a samples directory, the
prompts, references and answers go to ``<samples_dir>/round-NNN.jsonl``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config.schema import RunConfig
from fedlora.data import label_names, load_central_test, make_collator, tokenize_dataset
from fedlora.lora.state import expected_shapes, set_lora_state
from fedlora.memory import release_freed_memory
from fedlora.models.build import build_lora_model, load_tokenizer
from fedlora.models.shapes import meta_adapter_shapes
from fedlora.training.evaluate import evaluate
from fedlora.training.generation import generation_rows, score_generation, write_samples


class CentralEvaluator:
    """Evaluates adapters on the central test split of ``cfg.data``.

    Construction loads the tokenizer, the test split and the label names (classification: the
    server sends them to every client), never the base model; :meth:`model_for` loads it on first
    use. With ``federation.central_eval=false`` the server calls only :meth:`adapter_shapes` and
    :attr:`labels`, so it never loads the base model.

    ``generation_rows`` are the ``(row index, row)`` pairs of the test split answered at every
    evaluation: chosen once, with the run seed (``seed``), so every round answers the same prompts.
    ``last_samples`` holds the answers of the latest evaluation (empty when generation is off).
    """

    def __init__(self, cfg: RunConfig, samples_dir: Path | None = None):
        self.cfg = cfg
        task = cfg.model.task
        labels = label_names(cfg.data, task, cfg.federation.num_clients)
        self.labels: list[str] | None = list(labels) if labels else None
        self.tokenizer = load_tokenizer(cfg.model)
        test = load_central_test(cfg.data, task, cfg.federation.num_clients)
        self.dataset = tokenize_dataset(test, self.tokenizer, task, cfg.model.max_length)
        self.collate = make_collator(self.tokenizer, task)
        self.samples_dir = Path(samples_dir) if samples_dir is not None else None
        k = cfg.federation.generate_samples if task == "causal_lm" else 0
        self.generation_rows = generation_rows(test, k, cfg.seed)
        self.last_samples: list[dict[str, Any]] = []

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
        """Keys and shapes of an adapter of this rank on the configured model.

        With central evaluation on, the real model is loaded now (it is needed for round 0 anyway
        and stays cached); with it off, a weightless meta-device copy gives the same keys and
        shapes without loading the base model.
        """
        if not self.cfg.federation.central_eval:
            return meta_adapter_shapes(self.cfg.model, self.cfg.lora, rank=rank, num_labels=self.num_labels)
        return expected_shapes(self.model_for(rank, self.cfg.lora.alpha))

    def evaluate(self, adapter: GlobalAdapter, rnd: int | None = None) -> dict[str, float]:
        model = self.model_for(adapter.rank, adapter.alpha, adapter.rank_pattern, adapter.alpha_pattern)
        set_lora_state(model, adapter.state)
        try:
            return self.evaluate_model(model, rnd)
        finally:
            release_freed_memory()  # the server idles while clients train: keep only what it holds

    def evaluate_model(self, model: torch.nn.Module, rnd: int | None = None) -> dict[str, float]:
        """Loss metrics on the test split, plus the generation scores when generation is on.

        With ``rnd`` and a ``samples_dir`` the answered samples are written for that round.
        """
        metrics = evaluate(
            model, self.dataset, self.collate, task=self.cfg.model.task,
            batch_size=self.cfg.train.eval_batch_size,
        )
        out = {k: float(v) for k, v in metrics.items() if k not in ("num_examples", "num_tokens")}
        if self.generation_rows:
            cfg = self.cfg
            gen, self.last_samples = score_generation(
                model, self.tokenizer, self.generation_rows, max_new_tokens=cfg.federation.max_new_tokens,
                batch_size=cfg.train.eval_batch_size, max_length=cfg.model.max_length,
            )
            out.update(gen)
            if rnd is not None and self.samples_dir is not None:
                write_samples(self.samples_dir, rnd, self.last_samples)
        return out
