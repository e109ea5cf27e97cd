"""Tiny random models built in code, so tests and smoke runs need no download.

Every process that builds a tiny model must get *identical* weights and vocabulary: in a
simulation several Ray workers may build the model independently (on different machines the
cache is not shared), and federated averaging only makes sense if all clients start from the same
base. Therefore the corpus is a fixed, generated list of lines, the BPE vocabulary is trained from
it with a fixed size, and the weights are drawn under a fixed torch seed inside a forked RNG (so the
caller's random state is left alone).

The builders write an ordinary Hugging Face directory (``config.json``, safetensors, tokenizer
files), so the same ``from_pretrained`` path as for real models is exercised.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

TINY_KINDS = ("bert", "llama")
"""Kinds accepted by :func:`build_tiny` (``model.source: tiny:<kind>``)."""

_SEED = 1234
_VOCAB_SIZE = 300
_SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>"]

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the robot", "a child", "the farmer"]
_VERBS = ["likes", "sees", "builds", "reads", "finds", "paints", "carries", "answers"]
_OBJECTS = ["a red ball", "the old book", "a small house", "the blue sky", "fresh bread", "a long letter"]
_ENDINGS = ["today.", "every morning.", "with joy.", "in the garden.", "after school.", "again!", "?"]


def tiny_corpus(num_lines: int = 400) -> list[str]:
    """Return a fixed list of English-like lines used to train the tiny BPE vocabulary.

    Parameters
    ----------
    num_lines
        How many lines to generate.

    Returns
    -------
    list of str
        The same lines in every process and Python run (seeded :class:`random.Random`).
    """
    rng = random.Random(_SEED)
    lines = []
    for i in range(num_lines):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ENDINGS)]
        line = " ".join(words)
        lines.append(line.capitalize() if i % 3 == 0 else line)
    lines += ["What is the capital of France?", "Paris is the capital of France.", "0 1 2 3 4 5 6 7 8 9"]
    return lines


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train the deterministic byte-level BPE tokenizer shared by all tiny models.

    Returns
    -------
    PreTrainedTokenizerFast
        With ``<unk>``, ``<pad>``, ``<s>`` and ``</s>`` as unk/pad/bos/eos tokens.
    """
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def build_tiny(kind: str, out_dir: Path, num_labels: int = 3) -> Path:
    """Build a tiny random model and its tokenizer and save both to ``out_dir``.

    Parameters
    ----------
    kind
        ``"bert"`` (a :class:`~transformers.BertForSequenceClassification`, 2 layers, hidden 64) or
        ``"llama"`` (a :class:`~transformers.LlamaForCausalLM`, 2 layers, hidden 64, GQA 4/2 heads).
    out_dir
        Directory to write; created if missing.
    num_labels
        Size of the BERT classification head (ignored for llama). Loading with another
        ``num_labels`` re-initialises the head.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`TINY_KINDS`.
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"model.source: unknown tiny model 'tiny:{kind}'; expected one of "
                         f"{[f'tiny:{k}' for k in TINY_KINDS]}")
    tok = build_tiny_tokenizer()
    special = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
               "eos_token_id": tok.eos_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        if kind == "bert":
            config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                                num_labels=num_labels, **special)
            model = BertForSequenceClassification(config)
        else:
            config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, **special)
            model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny %s (%s parameters, vocab %s) in %s", kind, n_params, len(tok), out_dir)
    return out_dir
