"""Strict extract/load of a PeftModel's adapter tensors.

PEFT's ``set_peft_model_state_dict`` loads with ``strict=False`` and lists every base weight as
"missing", so a typo'd or foreign key would be silently ignored (huggingface/peft#2699). Here the
incoming state must match the model's adapter keys and shapes exactly, and any difference raises
an error naming the key.

DoRA adapters (``lora.use_dora``) go through the same functions: PEFT names their magnitude
``<module>.lora_magnitude_vector`` in the state dict (its loader maps it back onto the
``DoraLinearLayer``), so it is checked, extracted and loaded like any other key.
:func:`base_magnitudes` gives their initial value, which no seed can.
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedlora.lora.keys import M_SUFFIX, LoraState


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


def base_magnitudes(model: PeftModel, adapter_name: str | None = None) -> LoraState:
    """DoRA's initial magnitude of every module of a DoRA adapter: the column norms of the base weight.

    PEFT sets ``m = ||W0 + s B A||_col`` when it adds a DoRA adapter, and a fresh adapter has
    B = 0, so the initial update is zero exactly when ``m = ||W0||_col`` (one entry per output
    feature, for ``Conv1D`` after PEFT's ``fan_in_fan_out`` transpose, from the dequantized weight
    of a 4-bit base). Computed here from the base weights themselves rather than read from the
    adapter, whose magnitudes a cached model may have overwritten since. Returns CPU float32
    tensors under the adapter's state-dict keys.

    Raises
    ------
    LoraStateError
        If the adapter is not a DoRA adapter, or its magnitude keys and the layers found differ.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight
    from peft.utils.other import transpose

    name = _adapter(model, adapter_name)
    wanted = {k for k in expected_shapes(model, name) if k.endswith(M_SUFFIX)}
    if not wanted:
        raise LoraStateError(f"adapter {name!r} has no lora_magnitude_vector: it is not a DoRA adapter")
    out: LoraState = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, LoraLayer) and name in module.lora_magnitude_vector:
                dora = module.lora_magnitude_vector[name]
                weight = transpose(dequantize_module_weight(module.get_base_layer()), dora.fan_in_fan_out)
                norm = torch.linalg.norm(weight, dim=1).to(weight.dtype)
                out[module_name + M_SUFFIX] = norm.detach().to("cpu", torch.float32, copy=True)
    if set(out) != wanted:
        raise LoraStateError(f"DoRA layers of adapter {name!r} do not match its magnitude keys: "
                             f"{sorted(set(out) ^ wanted)[:5]}")
    return out
