"""Load tokenizers, base models and LoRA-wrapped models, once per process.

A simulation worker process serves many clients over many rounds. Loading a base model (and
wrapping it with PEFT) per client per round would dominate the run time, so everything here is
cached per process and callers overwrite the LoRA weights each round instead.

Two subtleties shape the caches:

* ``get_peft_model`` mutates the base model in place (it swaps ``Linear`` layers for LoRA layers).
  A cached base model is therefore *handed over* to the first :func:`build_lora_model` that wraps
  it and leaves the base cache; a later request for the plain base, or for a second, different
  LoRA shape, loads a fresh copy (and counts as a load) instead of corrupting the wrapped one.
* A classification head that is missing from the checkpoint is initialised randomly. Every client
  and the server must get the *same* head (with ``lora.train_head=false`` it is never transmitted),
  so base models are loaded under a fixed torch seed, in a forked RNG.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedlora.config.schema import TASKS, LoraConfig, ModelConfig
from fedlora.models.device import quantization_kwargs, select_device, select_dtype
from fedlora.models.quantized import load_nf4
from fedlora.models.shared_weights import load_shared
from fedlora.models.sources import resolve_model

if TYPE_CHECKING:
    import peft

logger = logging.getLogger(__name__)

LOAD_SEED = 0
"""Torch seed every base model is loaded under: a newly initialised head is the same in every process.

Code that loads a base model without :func:`load_base_model` (e.g. to reload an export whose head was
not trained, ``lora.train_head=false``) must seed with it too to get the same head."""

_lock = threading.RLock()
_tokenizers: dict[tuple, PreTrainedTokenizerBase] = {}
_bases: dict[tuple, PreTrainedModel] = {}
_lora_models: dict[tuple, peft.PeftModel] = {}
_loads = 0


def _model_key(cfg: ModelConfig) -> tuple:
    # Only the fields that change the loaded weights; name/max_length do not.
    return (cfg.source, cfg.task, cfg.dtype, cfg.device, cfg.quantization, cfg.trust_remote_code,
            cfg.share_weights)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``cfg.source`` (cached per process).

    Parameters
    ----------
    cfg
        Model configuration.

    Returns
    -------
    PreTrainedTokenizerBase
        Always with a pad token (the EOS token when the model defines none).

    Raises
    ------
    ValueError
        If the tokenizer has neither a pad nor an EOS token.
    """
    key = (cfg.source, cfg.trust_remote_code)
    with _lock:
        if key not in _tokenizers:
            path = resolve_model(cfg).path
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise ValueError(f"model.source: the tokenizer of {cfg.source!r} has no pad or eos token")
                tok.pad_token = tok.eos_token
                logger.info("tokenizer of %s has no pad token; using eos %r", cfg.source, tok.eos_token)
            _tokenizers[key] = tok
        return _tokenizers[key]


def _check_num_labels(cfg: ModelConfig, num_labels: int | None) -> int | None:
    if cfg.task not in TASKS:
        raise ValueError(f"model.task: expected one of {list(TASKS)}, got {cfg.task!r}")
    if cfg.task == "causal_lm":
        return None
    if num_labels is None or num_labels < 1:
        raise ValueError(
            f"num_labels: expected a positive integer for model.task='classification', got {num_labels}"
        )
    return num_labels


def head_label_kwargs(num_labels: int | None) -> dict[str, dict]:
    """``id2label``/``label2id`` for a classification head of ``num_labels`` outputs: id2label (not
    num_labels) sets the head size without a warning when the checkpoint has another label count."""
    id2label = {i: f"LABEL_{i}" for i in range(num_labels or 0)}
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


def _load(cfg: ModelConfig, num_labels: int | None) -> PreTrainedModel:
    """Really load a base model from disk (no caching) and count it."""
    global _loads
    start = time.perf_counter()
    resolved = resolve_model(cfg)
    device = select_device(cfg.device)
    dtype = select_dtype(cfg.dtype, device, cfg.quantization)
    tok = load_tokenizer(cfg)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    quant = quantization_kwargs(cfg, device, dtype)
    if cfg.task == "classification":
        auto_cls = AutoModelForSequenceClassification
        # ignore_mismatched_sizes re-initialises a head of another label count instead of failing.
        kwargs.update(head_label_kwargs(num_labels), ignore_mismatched_sizes=True)
    else:
        auto_cls = AutoModelForCausalLM
    forked = [device.index] if device.type == "cuda" else []

    def from_pretrained(path: str, extra: dict) -> PreTrainedModel:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(LOAD_SEED)  # a newly initialised head is identical in every process
            return auto_cls.from_pretrained(path, **kwargs, **extra)

    if quant:  # NF4: quantized once, then read from the saved copy in the model cache
        model, origin = load_nf4(resolved, cfg, num_labels, device, dtype, quant, from_pretrained)
    elif cfg.share_weights and device.type == "cpu":  # one mapped copy per machine
        model, origin = load_shared(resolved, cfg, num_labels, dtype, lambda path: from_pretrained(path, {}))
    else:
        model, origin = from_pretrained(resolved.path, {}), ""
    if cfg.task == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id  # decoder seq-cls heads find the last token by it
    if cfg.quantization == "none":
        model.to(device)
    model.eval()
    with _lock:
        _loads += 1
        count = _loads
    logger.info("loaded base model %s [%s] (%s load in pid %s) in %.2f s on %s/%s%s", cfg.name,
                resolved.description, _ordinal(count), os.getpid(), time.perf_counter() - start, device,
                str(dtype).removeprefix("torch."), f", {origin}" if origin else "")
    return model


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def load_base_model(cfg: ModelConfig, num_labels: int | None = None) -> PreTrainedModel:
    """Load the base model for ``cfg`` (cached per process, in eval mode).

    Parameters
    ----------
    cfg
        Model configuration: source, task, dtype, device and quantization.
    num_labels
        Number of classes; required for ``task="classification"``, ignored for ``causal_lm``.

    Returns
    -------
    transformers.PreTrainedModel
        A sequence-classification or causal-LM model on the selected device. Repeated calls return
        the same object until :func:`build_lora_model` takes it over (see the module docstring).
    """
    key = (_model_key(cfg), _check_num_labels(cfg, num_labels))
    with _lock:
        if key not in _bases:
            _bases[key] = _load(cfg, key[1])
        return _bases[key]


def base_model_loads() -> int:
    """Return how many base models this process really loaded from disk."""
    return _loads


def release_models() -> int:
    """Drop every cached base and LoRA model (and the GPU memory they hold); return how many.

    For a long-lived node worker that sat idle: unlike :func:`clear_caches` it keeps the load
    counter, so a later reload shows up as one more load in ``base-model-loads``.
    """
    import gc

    with _lock:
        released = len(_bases) + len(_lora_models)
        _bases.clear()
        _lora_models.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def clear_caches() -> None:
    """Forget every cached tokenizer, base model and LoRA model and reset the load counter (for tests)."""
    global _loads
    with _lock:
        _tokenizers.clear()
        _bases.clear()
        _lora_models.clear()
        _loads = 0


def build_lora_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    *,
    rank: int | None = None,
    num_labels: int | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> peft.PeftModel:
    """The cached LoRA-wrapped model with an adapter of this shape active (in eval mode).

    Parameters
    ----------
    model_cfg
        Which base model.
    lora_cfg
        Adapter shape: ``alpha``, ``dropout``, ``target_modules`` (or a ``targets`` preset,
        :mod:`fedlora.models.targets`), ``train_head`` (classification
        only: train and ship the head, else keep it frozen) and ``init_seed`` (LoRA A init).
    rank
        LoRA rank of this client; ``None`` means ``lora_cfg.r``.
    num_labels
        Number of classes (classification only).
    rank_pattern, alpha_pattern
        PEFT's per-module overrides (module names as in the adapter state), for global adapters
        whose modules differ.

    Returns
    -------
    peft.PeftModel
        One object per base model and target modules within a process: each adapter shape is a
        named PEFT adapter on it (:mod:`fedlora.models.adapters`), added on first use and made
        the active, trainable one on every call. Callers load their LoRA weights into it and
        switch ``train()``/``eval()`` themselves.
    """
    from fedlora.models.adapters import activate, adapter_spec, add_adapter, lora_config
    from fedlora.models.peft_wrap import unwrap_head, wrap_with_lora
    from fedlora.models.targets import resolve_target_modules

    num_labels = _check_num_labels(model_cfg, num_labels)
    spec = adapter_spec(lora_cfg, rank, rank_pattern, alpha_pattern)
    train_head = lora_cfg.train_head if model_cfg.task == "classification" else None
    base_key = (_model_key(model_cfg), num_labels)
    # A preset resolves the same way on the same base, so (preset, list as written) names the targets.
    key = (base_key, tuple(lora_cfg.target_modules), lora_cfg.targets, train_head)
    with _lock:
        model = _lora_models.get(key)
        if model is None:
            # Take the cached base over (PEFT mutates it); load a fresh copy if it is gone.
            base = _bases.pop(base_key, None)
            if base is None:
                base = _load(model_cfg, num_labels)
            model = _lora_models[key] = wrap_with_lora(base, model_cfg, lora_cfg, spec)
        elif spec.name not in model.peft_config:
            targets = resolve_target_modules(model, lora_cfg)
            add_adapter(model, spec, lora_config(spec, model_cfg.task, targets))
            if model_cfg.task == "classification" and not lora_cfg.train_head:
                unwrap_head(model)
        activate(model, spec.name)
        model.eval()
        return model
