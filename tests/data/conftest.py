"""``fedlora.data`` test fixtures: offline mode, a private datasets cache, a tiny in-process tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import pytest

TOKENIZER_CORPUS = [
    "What is the color of the big apple? The color of the big apple is red.",
    "### Question: hello there ### Answer: hi, how are you doing today?",
    "user assistant system: the quick brown fox jumps over the lazy dog.",
    "good great bad terrible okay fine love hate flight phone car game",
]


@pytest.fixture(autouse=True)
def _private_datasets_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_dataset('json', ...)`` builds arrow caches; keep them out of the user's HF cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-datasets")


def build_tiny_tokenizer(pad: bool = True):
    """A byte-level BPE tokenizer (vocab 300) trained in-process: no files, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(TOKENIZER_CORPUS * 20, trainer=trainer)
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **kwargs
    )


@pytest.fixture
def make_tokenizer():
    """``build_tiny_tokenizer`` itself, for tests that need several or a pad-less one."""
    return build_tiny_tokenizer


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()
