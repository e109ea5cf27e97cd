"""LoRA adapter state: key parsing, strict extract/load, factored maths, and the wire codec.

``LoraState`` is a ``dict[str, torch.Tensor]`` whose keys are exactly PEFT's adapter-name-free
keys (``...q_proj.lora_A.weight``), as returned by ``peft.get_peft_model_state_dict``.
"""

from fedlora.lora.keys import LoraState, lora_modules, module_ranks, split_key

__all__ = ["LoraState", "lora_modules", "module_ranks", "split_key"]
