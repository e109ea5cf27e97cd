"""Parse PEFT's adapter-name-free state-dict keys into LoRA modules.

A LoRA module ``m`` appears as two keys, ``m.lora_A.weight`` (r x in) and ``m.lora_B.weight``
(out x r). With DoRA (``lora.use_dora``) it has a third, ``m.lora_magnitude_vector`` (out,): the
learned column norms of the adapted weight, named as ``get_peft_model_state_dict`` names them
(PEFT strips the ``.weight`` of its ``DoraLinearLayer``). Everything that is not a LoRA factor (a
``modules_to_save`` head such as ``classifier.weight``, and the magnitudes) is an *extra* tensor
that strategies average like ordinary parameters, with the same client weights p_k: a magnitude
does not depend on the rank, so clients of any rank hold the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LoraState = dict[str, torch.Tensor]

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
M_SUFFIX = ".lora_magnitude_vector"
"""DoRA's per-module magnitude, as PEFT's adapter state dict (and ``adapter_model.safetensors``) names it."""


def split_key(key: str) -> tuple[str, str | None]:
    """Return ``(module, "A" | "B" | "M")`` for a LoRA key (M: a DoRA magnitude), or ``(key, None)``
    for any other tensor (e.g. a head)."""
    for suffix, kind in ((A_SUFFIX, "A"), (B_SUFFIX, "B"), (M_SUFFIX, "M")):
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return key, None


def a_key(module: str) -> str:
    """The state key of module's A factor."""
    return module + A_SUFFIX


def b_key(module: str) -> str:
    """The state key of module's B factor."""
    return module + B_SUFFIX


def m_key(module: str) -> str:
    """The state key of module's DoRA magnitude vector."""
    return module + M_SUFFIX


@dataclass(frozen=True)
class LoraPair:
    """One module's factors: the update is ``B @ A`` (times the adapter's scaling)."""

    A: torch.Tensor
    B: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def lora_modules(state: LoraState) -> dict[str, LoraPair]:
    """Group a state into ``{module: LoraPair}``, checking that factors pair up and agree.

    DoRA magnitudes, if any, are checked too: each belongs to a module with both factors and has
    one entry per output feature (``lora_B.weight.shape[0]``).

    Raises
    ------
    ValueError
        If a module has only one factor, A and B disagree on the rank, or a magnitude vector has
        no module or the wrong length.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"A": {}, "B": {}, "M": {}}
    for key, tensor in state.items():
        module, kind = split_key(key)
        if kind is not None:
            parts[kind][module] = tensor
    a_parts, b_parts = parts["A"], parts["B"]
    unpaired = sorted(set(a_parts) ^ set(b_parts))
    if unpaired:
        raise ValueError(f"LoRA state has modules with only one of lora_A/lora_B: {unpaired[:5]}")
    _check_magnitudes(parts["M"], b_parts)
    pairs = {}
    for module in sorted(a_parts):
        A, B = a_parts[module], b_parts[module]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(
                f"LoRA module {module!r}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} "
                "do not form a rank-r pair (expected A: r x in, B: out x r)"
            )
        pairs[module] = LoraPair(A=A, B=B)
    return pairs


def _check_magnitudes(magnitudes: dict[str, torch.Tensor], b_parts: dict[str, torch.Tensor]) -> None:
    orphans = sorted(set(magnitudes) - set(b_parts))
    if orphans:
        raise ValueError(f"LoRA state has {M_SUFFIX.lstrip('.')} for modules without lora_A/lora_B: "
                         f"{orphans[:5]}")
    for module, m in sorted(magnitudes.items()):
        out = b_parts[module].shape[0]
        if tuple(m.shape) != (out,):
            raise ValueError(f"LoRA module {module!r}: {M_SUFFIX.lstrip('.')} has shape {tuple(m.shape)}, "
                             f"expected ({out},) (one magnitude per output feature of lora_B)")


def extra_keys(state: LoraState) -> list[str]:
    """Keys of tensors that are not LoRA factors: a trainable head, DoRA magnitudes."""
    return sorted(k for k in state if split_key(k)[1] not in ("A", "B"))


def magnitude_keys(state: LoraState) -> list[str]:
    """Keys of the DoRA magnitude vectors of a state (empty without DoRA)."""
    return sorted(k for k in state if split_key(k)[1] == "M")


def module_ranks(state: LoraState) -> dict[str, int]:
    """Rank of each LoRA module in a state."""
    return {m: p.rank for m, p in lora_modules(state).items()}


def uniform_rank(state: LoraState) -> int:
    """The single rank shared by every module.

    Raises
    ------
    ValueError
        If the state has no LoRA module or modules disagree on the rank.
    """
    ranks = set(module_ranks(state).values())
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank across modules, found {sorted(ranks) or 'none'}")
    return ranks.pop()
