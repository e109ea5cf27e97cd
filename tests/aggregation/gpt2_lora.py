"""A tiny GPT-2 with LoRA on its ``Conv1D`` attention (``fan_in_fan_out``), and PEFT's own delta
weights of it: the reference the aggregators' exactness is checked against with real PEFT layers."""

from __future__ import annotations

import warnings

import torch

PREFIX = "base_model.model."


def gpt2_lora(rank: int, alpha: float, rank_pattern=None, alpha_pattern=None, use_rslora: bool = False):
    """The same seeded tiny GPT-2 every call, wrapped by PEFT with the given rank/alpha patterns
    (keys with or without ``PREFIX``), in float64."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    base = GPT2LMHeadModel(config)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["c_attn"], fan_in_fan_out=True,
                     lora_dropout=0.0, use_rslora=use_rslora,
                     rank_pattern={k.removeprefix(PREFIX): v for k, v in (rank_pattern or {}).items()},
                     alpha_pattern={k.removeprefix(PREFIX): v for k, v in (alpha_pattern or {}).items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(base, cfg).double()


def delta_weights(model) -> dict[str, torch.Tensor]:
    """PEFT's ``get_delta_weight`` of every LoRA layer, by module name."""
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        return {n: mod.get_delta_weight("default").detach() for n, mod in model.named_modules()
                if isinstance(mod, LoraLayer)}
