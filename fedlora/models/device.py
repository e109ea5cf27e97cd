"""Where and in what precision a base model lives: device, dtype and 4-bit quantization.

Kept apart from the caches in :mod:`fedlora.models.build` because exports are reloaded with the
same choices (:func:`fedlora.export.load_exported`), outside those caches.
"""

from __future__ import annotations

import logging
import os

import torch

from fedlora.config.schema import DEVICES, DTYPES, ModelConfig

logger = logging.getLogger(__name__)

HEAD_NAMES = ("classifier", "score")
"""Names of sequence-classification heads (BERT-like and decoder models); PEFT uses the same list."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def select_device(preference: str) -> torch.device:
    """Pick the torch device for ``model.device``.

    Parameters
    ----------
    preference
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``.

    Returns
    -------
    torch.device
        CUDA devices carry an explicit index (the current device), so ``str(device)`` is a valid
        ``device_map`` target.

    Raises
    ------
    ValueError
        If the preference is unknown or names an accelerator this process cannot see.
    """
    if preference not in DEVICES:
        raise ValueError(f"model.device: expected one of {list(DEVICES)}, got {preference!r}")
    cuda_ok = torch.cuda.is_available()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        preference = "cuda" if cuda_ok else "mps" if mps_ok else "cpu"
    if preference == "cuda":
        if not cuda_ok:
            raise ValueError(
                f"model.device: 'cuda' requested but CUDA is not available (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                "set model.device to 'auto' or 'cpu'"
            )
        return torch.device("cuda", torch.cuda.current_device())
    if preference == "mps" and not mps_ok:
        raise ValueError("model.device: 'mps' requested but Apple MPS is not available; set 'auto' or 'cpu'")
    return torch.device(preference)


def select_dtype(preference: str, device: torch.device, quantization: str = "none") -> torch.dtype:
    """Pick the parameter dtype for ``model.dtype`` (with NF4: the compute dtype too).

    Parameters
    ----------
    preference
        ``"auto"`` (bfloat16 on a CUDA device with native bf16 support, else float32),
        ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    device
        The device the model will live on.
    quantization
        ``model.quantization``; only changes the wording of the log line (with ``nf4`` the dtype is
        the 4-bit layers' compute dtype).

    Returns
    -------
    torch.dtype

    Raises
    ------
    ValueError
        If the preference is unknown.
    """
    if preference not in DTYPES:
        raise ValueError(f"model.dtype: expected one of {list(DTYPES)}, got {preference!r}")
    if preference == "auto":
        dtype, why = _auto_dtype(device)
        what = "nf4 compute dtype" if quantization == "nf4" else "dtype"
        logger.info("model.dtype=auto: %s %s on %s (%s)", what, str(dtype).removeprefix("torch."), device,
                    why)
        return dtype
    if preference == "float16" and device.type == "cpu":
        logger.warning("model.dtype=float16 on CPU is slow and poorly supported; use float32 or bfloat16")
    return _DTYPES[preference]


def _auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """bfloat16 where the device runs it natively, else float32; with the reason, for the log.

    Emulated bf16 (pre-Ampere GPUs, CPUs) is slower than float32, so only native support counts.
    """
    if device.type != "cuda":
        return torch.float32, (f"bfloat16 needs a CUDA device with bf16 support; {device.type} falls back "
                               "to float32")
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip or props.major >= 8:  # what torch.cuda.is_bf16_supported calls native, per device
        return torch.bfloat16, f"{props.name} supports bf16 natively"
    return torch.float32, (f"{props.name} (compute capability {props.major}.{props.minor}) has no native "
                           "bf16; falls back to float32")


def quantization_kwargs(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """``from_pretrained`` keyword arguments for ``model.quantization`` (empty for 'none')."""
    if cfg.quantization == "none":
        return {}
    if cfg.quantization != "nf4":
        raise ValueError(f"model.quantization: expected 'none' or 'nf4', got {cfg.quantization!r}")
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32,
        # A seq-cls head must stay dense for PEFT's modules_to_save copy. For causal LMs keep None:
        # an explicit list would replace transformers' default skips (lm_head, tied embeddings).
        llm_int8_skip_modules=list(HEAD_NAMES) if cfg.task == "classification" else None,
    )
    return {"quantization_config": bnb, "device_map": {"": str(device)}}
