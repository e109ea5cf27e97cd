"""Write a random-weight Llama of a chosen size, for measuring memory at sizes no packaged model has.

    python -m simulations.random_llm /tmp/llama1b                    # about 0.9 B parameters, bf16
    python -m simulations.random_llm /tmp/llama3b --hidden 3072 --layers 26 --intermediate 8192

The packaged offline models stop at a few hundred million parameters, where a process's Python
stack (about 0.5 GB) weighs as much as the weights, so a memory ratio measured on them says more
about the stack than about the model. This writes an ordinary Hugging Face directory (config,
bfloat16 safetensors, and the tokenizer of the packaged SmolLM2, converted once by fedlora) that
``model.source=<dir>`` loads like any local model: a bfloat16 checkpoint computed in float32 on a
CPU, the case ``model.share_weights`` exists for. The weights are random (seeded), so losses mean
nothing; only time and memory do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def write_random_llm(out: Path, hidden: int, layers: int, intermediate: int, heads: int,
                     seed: int = 0) -> int:
    """Write the model to ``out``; return its parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedlora.config import compose
    from fedlora.models.sources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(compose(["preset=llm"]).model).path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write (must not exist)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=5504)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new directory")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    n = write_random_llm(args.out, args.hidden, args.layers, args.intermediate, args.heads, args.seed)
    print(f"wrote a random Llama of {n / 1e9:.2f} B parameters (bfloat16) to {args.out}")
    print(f"use it with: model.source={args.out} model.name={args.out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
