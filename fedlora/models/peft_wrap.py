"""Wrap a base model with a LoRA adapter, with the head handling federated training needs.

Kept apart from :mod:`fedlora.models.build` (which owns caching) because the PEFT details are
fiddly enough to deserve their own place:

* PEFT's sequence-classification wrapper *always* adds ``classifier``/``score`` to
  ``modules_to_save``, even when asked for none. With ``lora.train_head=false`` the head must
  really be excluded -- frozen, not trainable, and absent from the adapter state dict that
  travels to the server -- so the wrapper PEFT put around it is removed again.
* LoRA ``A`` matrices are drawn at wrap time, so the wrap runs under ``torch.manual_seed(
  lora.init_seed)`` (in a forked RNG): every client builds the same initial adapter.
* A target module name that matches nothing is almost always a typo or a config written for
  another architecture; PEFT silently ignores it unless *all* names miss, so it is checked here.
  A ``lora.targets`` preset is resolved here too (:mod:`fedlora.models.targets`), on the base
  itself, so the loaded model and its meta-device twin (:mod:`fedlora.models.shapes`) agree.
* Gradient checkpointing is switched on the cached model per training call
  (:func:`set_gradient_checkpointing`), not at wrap time: the model outlives one client's config.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import peft
import torch
from peft.utils.other import ModulesToSaveWrapper
from transformers import PreTrainedModel

from fedlora.config.schema import LoraConfig, ModelConfig
from fedlora.models.adapters import AdapterSpec, lora_config
from fedlora.models.targets import LINEAR_TYPES, resolve_target_modules

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_peft_deprecation() -> Iterator[None]:
    """Silence the one FutureWarning PEFT's own wrapping triggers in transformers 5.

    ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing``, which transformers 5
    deprecates in favour of ``is_activation_checkpointing``: every run printed that warning once per
    process although no user code, and no fedlora code, uses the old name. Only that message, only
    around PEFT's calls; any other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def check_target_modules(model: torch.nn.Module, target_modules: list[str]) -> None:
    """Raise if a name in ``target_modules`` matches no module of ``model`` (PEFT's suffix rule).

    Parameters
    ----------
    model
        The base model.
    target_modules
        Module names as in ``lora.target_modules``.

    Raises
    ------
    ValueError
        Naming the unmatched entries and the linear layer names the model does have.
    """
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if type(m).__name__ in LINEAR_TYPES})
        raise ValueError(
            f"lora.target_modules: {missing} match no module of {type(model).__name__}; "
            f"its linear layers are named {linear}"
        )


def unwrap_head(model: peft.PeftModel) -> None:
    """Undo PEFT's automatic ``modules_to_save`` head: restore the original, frozen module."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            original = module.original_module
            original.requires_grad_(False)
            setattr(model.get_submodule(parent_name), child, original)
    for config in model.peft_config.values():
        config.modules_to_save = None


def wrap_with_lora(
    base: PreTrainedModel, model_cfg: ModelConfig, lora_cfg: LoraConfig, spec: AdapterSpec
) -> peft.PeftModel:
    """Wrap ``base`` in place with its first LoRA adapter, named ``spec.name``.

    Parameters
    ----------
    base
        A base model that nothing else uses any more (PEFT mutates it).
    model_cfg
        Its configuration (task and quantization matter here).
    lora_cfg
        Target modules and whether the classification head trains (``train_head``).
    spec
        The adapter's rank, alpha, dropout, init seed and per-module patterns.

    Returns
    -------
    peft.PeftModel
        In eval mode. Trainable parameters: LoRA ``A``/``B`` of the target modules, plus the
        classification head when ``model_cfg.task="classification"`` and ``lora_cfg.train_head``.
    """
    classification = model_cfg.task == "classification"
    if model_cfg.quantization == "nf4":
        # Freezes the base and casts its dense bf16/fp16 parameters (norms, embeddings) to float32 for
        # stable training; checkpointing is left to set_gradient_checkpointing (per training call).
        base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    targets = resolve_target_modules(base, lora_cfg)
    check_target_modules(base, targets)
    config = lora_config(spec, model_cfg.task, targets)
    with torch.random.fork_rng(devices=[]), quiet_peft_deprecation():
        torch.manual_seed(spec.init_seed)
        model = peft.get_peft_model(base, config, adapter_name=spec.name)
    if classification and not lora_cfg.train_head:
        unwrap_head(model)
    model.eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    head = (" + head" if lora_cfg.train_head else " (head frozen)") if classification else ""
    logger.info("wrapped %s with LoRA r=%s alpha=%s on %s%s: %s of %s parameters trainable", model_cfg.name,
                spec.rank, spec.alpha, _describe_targets(lora_cfg, targets), head, trainable, total)
    return model


def _describe_targets(lora_cfg: LoraConfig, targets: list[str]) -> str:
    if not lora_cfg.targets:
        return str(targets)
    shown = targets if len(targets) <= 8 else [*targets[:8], f"... {len(targets) - 8} more"]
    return f"lora.targets={lora_cfg.targets} {shown}"


def set_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> bool:
    """Switch activation (gradient) checkpointing of a (PEFT-wrapped) transformers model on or off.

    Non-reentrant checkpointing (``use_reentrant=False``) is used: it recomputes the forward of each
    decoder/encoder block in the backward pass and gives the same gradients as no checkpointing,
    and, unlike the reentrant variant, it needs no inputs that require grad, so neither
    ``enable_input_require_grads`` nor a kbit-prepare hook is needed for LoRA on a frozen (or NF4)
    base. Idempotent; the cached model keeps the setting until the next call. Evaluation is not
    affected: transformers checkpoints only in training mode.

    Returns
    -------
    bool
        Whether the model's state changed.

    Raises
    ------
    ValueError
        Naming ``train.gradient_checkpointing`` if the architecture does not support it.
    """
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    current = bool(getattr(base, "is_activation_checkpointing", False))
    if current == enabled:
        return False
    if enabled:
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ValueError(f"train.gradient_checkpointing: {type(base).__name__} does not support "
                             "activation checkpointing; set it to false")
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()
    logger.info("gradient checkpointing %s on %s", "enabled (use_reentrant=False)" if enabled else "disabled",
                type(base).__name__)
    return True
