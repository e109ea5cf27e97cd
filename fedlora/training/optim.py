"""The local optimizer: ``train.optimizer`` and LoRA+ (``train.loraplus_lr_ratio``).

Why a module of its own: the optimizer is built fresh every round (clients keep no state between
rounds), and three choices meet here that must be checked the same way at config time, in the
preflight and on the client: which implementation, on which device, with which parameter groups.

Optimizers (all AdamW, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``train.weight_decay`` passed
explicitly because bitsandbytes' default is 0.01, not torch's 0):

* ``adamw``: ``torch.optim.AdamW``.
* ``adamw_8bit``: ``bitsandbytes.optim.AdamW8bit``, 8-bit blockwise-quantized moments (about a
  quarter of AdamW's state memory). bitsandbytes 0.50 runs it on CPU as well as CUDA, so it is
  allowed on both; tensors under 4096 elements keep 32-bit state (bitsandbytes' ``min_8bit_size``),
  which on tiny test models means all of them.
* ``paged_adamw_8bit`` / ``paged_adamw_32bit``: ``PagedAdamW8bit`` / ``PagedAdamW32bit``, whose
  state lives in CUDA unified memory and is paged to the CPU under memory pressure. Paging needs a
  CUDA device; on CPU bitsandbytes would silently fall back to the unpaged variant, so fedlora
  refuses instead (:func:`optimizer_device_problem`).

LoRA+ (Hayou et al., 2024): the B factors learn ``loraplus_lr_ratio`` times faster than the A
factors. B matrices (``lora_B``, ``lora_embedding_B``) form their own parameter group at
``lr * ratio``; everything else that trains (LoRA A, a classification head, DoRA magnitude
vectors) stays at the base ``lr``: the head and the magnitudes are not low-rank factors, and the
LoRA+ analysis that motivates a larger B step does not apply to them. With ratio 1 there is one
group, exactly the optimizer of plain LoRA.
"""

from __future__ import annotations

import logging

import torch

from fedlora.config.schema import TrainConfig

logger = logging.getLogger(__name__)

BNB_CLASSES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit",
               "paged_adamw_32bit": "PagedAdamW32bit"}
"""``train.optimizer`` -> class name in ``bitsandbytes.optim``."""

NEEDS_CUDA = ("paged_adamw_8bit", "paged_adamw_32bit")
"""Optimizers whose state is paged between GPU and CPU memory: CUDA only."""

B_MARKERS = ("lora_B", "lora_embedding_B")
"""Parameter-name components of LoRA B factors (the LoRA+ group)."""


def optimizer_device_problem(optimizer: str, device: str) -> str | None:
    """Why ``train.optimizer`` cannot run on a ``device`` (a type such as ``cpu``), or ``None``.

    Parameters
    ----------
    optimizer
        A ``train.optimizer`` value.
    device
        ``model.device`` (``auto`` is never a problem here: it is checked where the device is known)
        or a ``torch.device.type``.
    """
    if optimizer in NEEDS_CUDA and device in ("cpu", "mps"):
        return (f"train.optimizer: {optimizer!r} (bitsandbytes {BNB_CLASSES[optimizer]}) pages its state "
                f"between GPU and CPU memory and needs a CUDA device, but the model is on {device!r}; use "
                "train.optimizer=adamw or adamw_8bit (which runs on CPU), or model.device=cuda")
    if optimizer in BNB_CLASSES and device == "mps":
        return (f"train.optimizer: {optimizer!r} (bitsandbytes) does not run on Apple MPS; use "
                "train.optimizer=adamw")
    return None


def param_groups(model: torch.nn.Module, lr: float, loraplus_lr_ratio: float = 1.0) -> list[dict]:
    """The trainable parameters of ``model`` as optimizer parameter groups.

    Returns
    -------
    list of dict
        One group ``{"name": "all", "params": [...], "lr": lr}`` when ``loraplus_lr_ratio == 1``;
        else ``"base"`` (every trainable parameter that is not a B factor, at ``lr``) and
        ``"lora_B"`` (at ``lr * loraplus_lr_ratio``), empty groups left out.

    Raises
    ------
    ValueError
        If nothing trains, or the ratio is not positive.
    """
    if loraplus_lr_ratio <= 0:
        raise ValueError(f"train.loraplus_lr_ratio: expected > 0 (1: plain LoRA), got {loraplus_lr_ratio}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("train_local: the model has no parameters with requires_grad=True")
    if loraplus_lr_ratio == 1.0:
        return [{"name": "all", "params": [p for _, p in named], "lr": lr}]
    is_b = [any(m in n.split(".") for m in B_MARKERS) for n, _ in named]
    base = [p for (_, p), b in zip(named, is_b, strict=True) if not b]
    b_params = [p for (_, p), b in zip(named, is_b, strict=True) if b]
    if not b_params:
        logger.warning("train.loraplus_lr_ratio=%s: the model has no LoRA B factors; every parameter "
                       "trains at lr %.1e", loraplus_lr_ratio, lr)
    groups = [{"name": "base", "params": base, "lr": lr},
              {"name": "lora_B", "params": b_params, "lr": lr * loraplus_lr_ratio}]
    return [g for g in groups if g["params"]]


def _bnb_class(name: str) -> type[torch.optim.Optimizer]:
    try:
        import bitsandbytes.optim as bnb_optim
    except ImportError as err:
        raise ValueError(f"train.optimizer: {name!r} needs bitsandbytes, which cannot be imported ({err}); "
                         "install bitsandbytes or use train.optimizer=adamw") from err
    return getattr(bnb_optim, BNB_CLASSES[name])


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters of ``model`` for one round.

    Parameters
    ----------
    model
        Its trainable parameters decide the groups (:func:`param_groups`); the first one's device
        decides whether a CUDA-only optimizer may run.
    cfg
        ``optimizer``, ``loraplus_lr_ratio`` and ``weight_decay``.
    lr
        This round's base learning rate (B factors get ``lr * loraplus_lr_ratio``).

    Raises
    ------
    ValueError
        Naming ``train.optimizer`` for an unknown optimizer, one that cannot run on the model's
        device, or a missing bitsandbytes.
    """
    groups = param_groups(model, lr, cfg.loraplus_lr_ratio)
    device = groups[0]["params"][0].device.type
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer not in BNB_CLASSES:
        raise ValueError(f"train.optimizer: expected one of {['adamw', *BNB_CLASSES]}, got {cfg.optimizer!r}")
    if problem := optimizer_device_problem(cfg.optimizer, device):
        raise ValueError(problem)
    cls = _bnb_class(cfg.optimizer)
    return cls(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)


def describe(optimizer: torch.optim.Optimizer) -> str:
    """``"AdamW8bit [base lr 1.0e-03 x12, lora_B lr 1.6e-02 x12]"``, for the log."""
    parts = [f"{g.get('name', i)} lr {g['lr']:.1e} x{len(g['params'])}"
             for i, g in enumerate(optimizer.param_groups)]
    return f"{type(optimizer).__name__} [{', '.join(parts)}]"
