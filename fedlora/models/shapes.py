"""Adapter keys and shapes from a weightless (meta-device) copy of the model.

Why: the server needs the adapter's keys and shapes to build the initial global state, and a PEFT
model to export the result, but with ``federation.central_eval=false`` it never runs the model. On
a SuperLink host without a GPU (or without the weights) loading the base model only for that
would be slow or impossible. The architecture alone fixes the shapes, so the model is built from
its ``config.json`` on the meta device and wrapped exactly as :func:`fedlora.models.build.
build_lora_model` wraps a real one (same target modules, head handling and adapter naming), which
gives the same keys as :func:`fedlora.lora.state.expected_shapes` on a loaded model.

Only ``config.json`` is read here: nothing is counted by :func:`fedlora.models.build.base_model_loads`.
:func:`fedlora.models.sources.resolve_model` still materialises the model directory (tiny models
are built once into the cache, a hub id not cached yet is downloaded, a GGUF file is converted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.models.build import _check_num_labels, head_label_kwargs
from fedlora.models.sources import resolve_model

if TYPE_CHECKING:
    import peft
    from transformers import PreTrainedModel


def meta_skeleton(model_cfg: ModelConfig, num_labels: int | None = None) -> PreTrainedModel:
    """The base architecture of ``model_cfg`` on the meta device: shapes, no weights.

    A classification head gets ``num_labels`` outputs via ``id2label``, as the real load in
    :mod:`fedlora.models.build` does (the checkpoint's own label count does not matter). dtype,
    device and quantization do not change any adapter shape (a 4-bit base keeps the
    ``in``/``out`` features of its linear layers, and the head stays dense), so they are ignored.
    """
    num_labels = _check_num_labels(model_cfg, num_labels)
    path = resolve_model(model_cfg).path
    kwargs: dict = {"trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.task == "classification":
        kwargs.update(head_label_kwargs(num_labels))
    config = AutoConfig.from_pretrained(path, **kwargs)
    auto = AutoModelForSequenceClassification if model_cfg.task == "classification" else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


def meta_target_modules(model_cfg: ModelConfig, lora_cfg: LoraConfig) -> list[str]:
    """The module list LoRA targets for ``lora_cfg`` on ``model_cfg``'s architecture, without weights.

    ``lora.target_modules`` as written when no ``lora.targets`` preset is set (nothing is read);
    else the preset resolved on a meta-device skeleton (:mod:`fedlora.models.targets`), the same
    list :func:`fedlora.models.peft_wrap.wrap_with_lora` gives the loaded model.
    """
    from fedlora.models.targets import resolve_target_modules

    if not lora_cfg.targets:
        return list(lora_cfg.target_modules)
    num_labels = 2 if model_cfg.task == "classification" else None  # the head's size names nothing
    return resolve_target_modules(meta_skeleton(model_cfg, num_labels), lora_cfg)


def meta_lora_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    *,
    rank: int | None = None,
    num_labels: int | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> peft.PeftModel:
    """A weightless PeftModel whose active adapter has the shape ``build_lora_model`` would give.

    Takes the same arguments as :func:`fedlora.models.build.build_lora_model`. Every tensor,
    LoRA factors included, is on the meta device: use it for keys, shapes and the PEFT config,
    never to compute. Not cached: each call builds a fresh skeleton (cheap, no weights).
    """
    from fedlora.models.adapters import adapter_spec
    from fedlora.models.peft_wrap import wrap_with_lora

    spec = adapter_spec(lora_cfg, rank, rank_pattern, alpha_pattern)
    skeleton = meta_skeleton(model_cfg, num_labels)
    # No kbit preparation on a skeleton: it only casts weights and hooks inputs, shapes stay.
    plain = dataclasses.replace(model_cfg, quantization="none")
    with torch.device("meta"):
        return wrap_with_lora(skeleton, plain, lora_cfg, spec)


def meta_adapter_shapes(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    *,
    rank: int | None = None,
    num_labels: int | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> dict[str, tuple[int, ...]]:
    """``expected_shapes(build_lora_model(...))`` without loading the base model's weights."""
    from fedlora.lora.state import expected_shapes

    return expected_shapes(meta_lora_model(model_cfg, lora_cfg, rank=rank, num_labels=num_labels,
                                           rank_pattern=rank_pattern, alpha_pattern=alpha_pattern))
