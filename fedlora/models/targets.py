"""``lora.targets`` presets (attention | mlp | all-linear), resolved per architecture family.

Why presets: the same intent ("LoRA on the attention projections") is spelt differently in every
architecture (``q_proj`` in Llama, ``c_attn`` in GPT-2, ``query`` in BERT), and some names are
ambiguous on their own: GPT-2's ``c_proj`` exists in both attention and MLP, BERT's
``output.dense`` ends both the attention output (``attention.output.dense``) and the MLP output
(``layer.N.output.dense``). A preset is therefore a rule over *full* module names per family,
keyed by ``config.model_type``.

The rule selects full module names on the model itself (or on its meta-device skeleton, which has
the same names), and the selection is written back as PEFT's own list form: for each selected
module the shortest dotted suffix that matches (by PEFT's rule, ``name == t`` or
``name.endswith("." + t)``) *only* selected modules. So ``targets=attention`` on Llama gives exactly
``[q_proj, k_proj, v_proj, o_proj]`` (the same adapter as writing the list by hand), GPT-2 gets
``attn.c_proj``, and BERT's MLP output gets one ``layer.<i>.output.dense`` entry per layer. The
result is an ordinary list in ``adapter_config.json`` that any PEFT install reads.

``all-linear`` is the union of ``attention`` and ``mlp``: PEFT's own ``"all-linear"`` would also
pick up BERT's pooler and, on a sequence-classification model without output embeddings, the
classification head that PEFT already trains as ``modules_to_save``. Heads and poolers are never
targeted; with ``lora.train_head`` the head trains in full instead.

An unknown family with a preset set is an error naming the known families: guessing names on an
architecture nobody checked would silently train the wrong layers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from fedlora.config.choices import LORA_TARGETS
from fedlora.config.schema import LoraConfig

logger = logging.getLogger(__name__)

LINEAR_TYPES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")
"""Class names of layers LoRA can adapt (PEFT's LoRA wrappers keep these names)."""

# Path components PEFT adds inside a wrapped layer; they are never targets themselves.
_PEFT_PARTS = frozenset({"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A",
                         "lora_embedding_B", "lora_magnitude_vector", "original_module", "modules_to_save"})


@dataclass(frozen=True)
class Family:
    """One architecture family: the ``config.model_type`` values it covers and its preset rules.

    ``attention`` and ``mlp`` are regular expressions searched in full module names (anchored at
    the end by the pattern itself).
    """

    name: str
    model_types: tuple[str, ...]
    attention: str
    mlp: str

    def pattern(self, preset: str) -> re.Pattern[str]:
        """The compiled rule of ``preset`` (all-linear: attention or mlp)."""
        parts = {"attention": [self.attention], "mlp": [self.mlp], "all-linear": [self.attention, self.mlp]}
        return re.compile("|".join(f"(?:{p})" for p in parts[preset]))


FAMILIES: tuple[Family, ...] = (
    Family("llama-style", ("llama", "mistral", "qwen2", "qwen3"),
           attention=r"(^|\.)self_attn\.(q_proj|k_proj|v_proj|o_proj)$",
           mlp=r"(^|\.)mlp\.(gate_proj|up_proj|down_proj)$"),
    Family("gpt2", ("gpt2",),
           attention=r"(^|\.)attn\.(c_attn|c_proj)$",
           mlp=r"(^|\.)mlp\.(c_fc|c_proj)$"),
    Family("bert", ("bert", "roberta"),
           attention=r"(^|\.)attention\.(self\.(query|key|value)|output\.dense)$",
           mlp=r"(^|\.)layer\.\d+\.(intermediate|output)\.dense$"),
)
"""Known families; extend here (and in the test) to support another architecture."""


def family_of(model_type: str) -> Family | None:
    """The family whose ``model_types`` include ``model_type``, if any."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def _base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def plain_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``named_modules`` of the transformers model without PEFT's internal submodules."""
    return [(n, m) for n, m in _base_of(model).named_modules()
            if n and not _PEFT_PARTS.intersection(n.split("."))]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def compress(selected: list[str], names: list[str]) -> list[str]:
    """PEFT list entries that match exactly the ``selected`` full names among ``names``.

    For each selected name, its shortest dotted suffix that matches no unselected name and does not
    start with a layer index; order of first appearance, duplicates dropped.
    """
    chosen = set(selected)
    out: list[str] = []
    for full in selected:
        parts = full.split(".")
        target = full
        for k in range(1, len(parts) + 1):
            candidate = ".".join(parts[-k:])
            if parts[-k].isdigit():  # "layer.0.output.dense" reads better than "0.output.dense"
                continue
            if all(n in chosen for n in names if _matches(n, candidate)):
                target = candidate
                break
        if target not in out:
            out.append(target)
    return out


def preset_modules(model: torch.nn.Module, preset: str) -> list[str]:
    """The target list of ``preset`` on ``model`` (a transformers model, PeftModel or meta skeleton).

    Raises
    ------
    ValueError
        Naming ``lora.targets`` if the preset is unknown, the model's family is not known (listing
        the known ones and the model's linear layer names), or the rule selects nothing.
    """
    if preset not in LORA_TARGETS or not preset:
        raise ValueError(f"lora.targets: expected one of {[t for t in LORA_TARGETS if t]}, got {preset!r}")
    config = getattr(_base_of(model), "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    modules = plain_modules(model)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules if type(m).__name__ in LINEAR_TYPES})
    family = family_of(model_type)
    if family is None:
        known = "; ".join(f"{f.name} (model_type {', '.join(f.model_types)})" for f in FAMILIES)
        raise ValueError(
            f"lora.targets: preset {preset!r} is defined for the families {known}, but this model's "
            f"config.model_type is {model_type!r}; set lora.targets='' and list the modules in "
            f"lora.target_modules (its linear layers are named {linear})"
        )
    rule = family.pattern(preset)
    selected = [n for n, m in modules if type(m).__name__ in LINEAR_TYPES and rule.search(n)]
    if not selected:
        raise ValueError(
            f"lora.targets: preset {preset!r} of family {family.name} matches no linear layer of this "
            f"{model_type} model; set lora.target_modules instead (its linear layers are named {linear})"
        )
    return compress(selected, [n for n, _ in modules])


def resolve_target_modules(model: torch.nn.Module, lora_cfg: LoraConfig) -> list[str]:
    """What LoRA targets on ``model``: ``lora.target_modules`` as written, or the preset's list.

    With ``lora.targets`` set the preset replaces ``target_modules`` (logged at debug level, as this
    runs once per adapter shape).
    """
    if not lora_cfg.targets:
        return list(lora_cfg.target_modules)
    resolved = preset_modules(model, lora_cfg.targets)
    logger.debug("lora.targets=%s: %s (replaces lora.target_modules=%s)", lora_cfg.targets, resolved,
                 list(lora_cfg.target_modules))
    return resolved
