"""Parse PEFT's adapter-name-free state-dict keys into LoRA modules.

A LoRA module ``m`` appears as two keys, ``m.lora_A.weight`` (r x in) and ``m.lora_B.weight``
(out x r). Everything else in a state (a ``modules_to_save`` head such as ``classifier.weight``)
is an *extra* tensor that strategies average like ordinary parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LoraState = dict[str, torch.Tensor]

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def split_key(key: str) -> tuple[str, str | None]:
    """Return ``(module, "A" | "B")`` for a LoRA key, or ``(key, None)`` for an extra tensor."""
    if key.endswith(A_SUFFIX):
        return key[: -len(A_SUFFIX)], "A"
    if key.endswith(B_SUFFIX):
        return key[: -len(B_SUFFIX)], "B"
    return key, None


def a_key(module: str) -> str:
    """The state key of module's A factor."""
    return module + A_SUFFIX


def b_key(module: str) -> str:
    """The state key of module's B factor."""
    return module + B_SUFFIX


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

    Raises
    ------
    ValueError
        If a module has only one factor, or A and B disagree on the rank.
    """
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, kind = split_key(key)
        if kind == "A":
            a_parts[module] = tensor
        elif kind == "B":
            b_parts[module] = tensor
    unpaired = sorted(set(a_parts) ^ set(b_parts))
    if unpaired:
        raise ValueError(f"LoRA state has modules with only one of lora_A/lora_B: {unpaired[:5]}")
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


def extra_keys(state: LoraState) -> list[str]:
    """Keys of tensors that are not LoRA factors (e.g. a trainable classification head)."""
    return sorted(k for k in state if split_key(k)[1] is None)


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
