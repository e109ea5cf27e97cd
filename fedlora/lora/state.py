"""Strict extract/load of a PeftModel's adapter tensors.

PEFT's ``set_peft_model_state_dict`` loads with ``strict=False`` and lists every base weight as
"missing", so a typo'd or foreign key would be silently ignored (huggingface/peft#2699). Here the
incoming state must match the model's adapter keys and shapes exactly, and any difference raises
an error naming the key.
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedlora.lora.keys import LoraState


class LoraStateError(ValueError):
    """An adapter state does not fit the model it is loaded into."""


def _adapter(model: PeftModel, adapter_name: str | None) -> str:
    """The named adapter, or the model's active (trainable) one."""
    return adapter_name if adapter_name is not None else model.active_adapter


def get_lora_state(model: PeftModel, adapter_name: str | None = None) -> LoraState:
    """Detached CPU copies of the adapter's tensors (LoRA factors and any trainable head)."""
    state = get_peft_model_state_dict(model, adapter_name=_adapter(model, adapter_name))
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def expected_shapes(model: PeftModel, adapter_name: str | None = None) -> dict[str, tuple[int, ...]]:
    """Adapter keys of ``model`` and their shapes."""
    state = get_peft_model_state_dict(model, adapter_name=_adapter(model, adapter_name))
    return {k: tuple(v.shape) for k, v in state.items()}


def check_state_fits(state: LoraState, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`LoraStateError` naming every unexpected, missing or mis-shaped key."""
    unexpected = sorted(set(state) - set(shapes))
    missing = sorted(set(shapes) - set(state))
    wrong = [
        f"{k}: got {tuple(state[k].shape)}, expected {shapes[k]}"
        for k in sorted(set(state) & set(shapes))
        if tuple(state[k].shape) != shapes[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
    if missing:
        problems.append(f"missing keys {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if wrong:
        problems.append("wrong shapes " + "; ".join(wrong[:5]))
    if problems:
        raise LoraStateError("adapter state does not fit the model: " + " | ".join(problems))


def set_lora_state(model: PeftModel, state: LoraState, adapter_name: str | None = None) -> None:
    """Load ``state`` into the adapter (the active one by default), refusing any key or shape mismatch.

    Tensors are cast to each parameter's dtype and device by PEFT's loader.
    """
    adapter_name = _adapter(model, adapter_name)
    check_state_fits(state, expected_shapes(model, adapter_name))
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    if result.unexpected_keys:  # defensive: PEFT renamed a key we believed valid
        raise LoraStateError(f"PEFT did not accept keys {sorted(result.unexpected_keys)[:5]}")


def states_equal(a: LoraState, b: LoraState, atol: float = 0.0) -> bool:
    """True when both states have the same keys and (close to) equal tensors."""
    if set(a) != set(b):
        return False
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0.0) for k in a)
