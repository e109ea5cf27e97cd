"""Tokenization and collation: loss masks, chat templates, truncation, padding, memoisation."""

from __future__ import annotations

import datasets
import pytest
import torch

from fedlora.config.schema import DataConfig
from fedlora.data import (
    IGNORE_INDEX,
    build_splits,
    end_of_turn_token,
    make_collator,
    pad_token_id,
    tokenize_dataset,
)
from fedlora.data.formatting import fit_lengths

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COLUMNS = ["input_ids", "attention_mask", "labels"]


@pytest.fixture
def chat_tokenizer(make_tokenizer):
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def qa(prompts: list[str], responses: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"prompt": prompts, "response": responses, "subject": ["x"] * len(prompts)}
    )


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_causal_without_template_masks_exactly_the_prompt(tiny_tokenizer) -> None:
    out = tokenize_dataset(
        qa(["What is the color?", "hello"], ["It is red.", "hi"]), tiny_tokenizer, "causal_lm", 128
    )
    assert out.column_names == COLUMNS and len(out) == 2
    row = out[0]
    prompt = ids(tiny_tokenizer, "### Question:\nWhat is the color?\n### Answer:\n")
    response = [*ids(tiny_tokenizer, "It is red."), tiny_tokenizer.eos_token_id]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert row["attention_mask"] == [1] * len(prompt + response)


def test_causal_with_chat_template_ends_with_end_of_turn(chat_tokenizer) -> None:
    assert end_of_turn_token(chat_tokenizer) == "<|im_end|>"
    out = tokenize_dataset(qa(["What is the color?"], ["It is red."]), chat_tokenizer, "causal_lm", 128)
    rendered = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the color?"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    prompt = ids(chat_tokenizer, rendered)
    response = ids(chat_tokenizer, "It is red.<|im_end|>")
    row = out[0]
    assert row["input_ids"] == prompt + response
    n_masked = sum(label == IGNORE_INDEX for label in row["labels"])
    assert n_masked == len(prompt) and row["labels"][:n_masked] == [IGNORE_INDEX] * n_masked
    assert row["labels"][n_masked:] == row["input_ids"][n_masked:]
    assert row["labels"][-1] == chat_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_truncation_keeps_response_tokens(tiny_tokenizer) -> None:
    long_prompt = "the quick brown fox jumps over the lazy dog " * 30
    out = tokenize_dataset(qa([long_prompt], ["It is red."]), tiny_tokenizer, "causal_lm", 32)
    row = out[0]
    response = [*ids(tiny_tokenizer, "It is red."), tiny_tokenizer.eos_token_id]
    full_prompt = ids(tiny_tokenizer, f"### Question:\n{long_prompt}\n### Answer:\n")
    assert len(row["input_ids"]) == 32
    assert row["labels"][-len(response) :] == response  # the whole response survives
    kept = 32 - len(response)
    assert row["input_ids"][:kept] == full_prompt[-kept:]  # prompt cut from the left
    assert row["labels"][:kept] == [IGNORE_INDEX] * kept

    long_both = tokenize_dataset(qa([long_prompt], [long_prompt]), tiny_tokenizer, "causal_lm", 32)[0]
    n_response = sum(label != IGNORE_INDEX for label in long_both["labels"])
    assert len(long_both["input_ids"]) == 32 and n_response == 16  # prompt keeps max_length // 2


def test_fit_lengths() -> None:
    assert fit_lengths(list(range(10)), [10, 11], 8) == (list(range(4, 10)), [10, 11])
    assert fit_lengths([1, 2, 3], list(range(20)), 8) == ([1, 2, 3], list(range(5)))
    assert fit_lengths([1, 2], [3], 8) == ([1, 2], [3])
    assert fit_lengths([], [1, 2, 3], 2) == ([], [1, 2])


def test_classification_tokenization(tiny_tokenizer) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "text": ["good flight", "the quick brown fox jumps over the lazy dog"],
            "label": [2, 0],
            "source": ["a", "b"],
        }
    )
    short = tiny_tokenizer("good flight")["input_ids"]
    assert len(short) < 12 < len(tiny_tokenizer(ds["text"][1])["input_ids"])
    out = tokenize_dataset(ds, tiny_tokenizer, "classification", 12)
    assert out.column_names == COLUMNS
    assert out["labels"][:] == [2, 0]
    assert out[0]["input_ids"] == short
    assert len(out[1]["input_ids"]) == 12 and out[1]["attention_mask"] == [1] * 12


def test_tokenized_datasets_are_memoised(tiny_tokenizer, make_tokenizer) -> None:
    ds = qa(["a", "b"], ["c", "d"])
    first = tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 64)
    assert tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 64) is first
    assert tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 32) is not first
    assert tokenize_dataset(ds, make_tokenizer(), "causal_lm", 64) is not first


def test_collator_pads_right(tiny_tokenizer) -> None:
    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ]
    batch = make_collator(tiny_tokenizer, "causal_lm")(features)
    pad = tiny_tokenizer.convert_tokens_to_ids("<pad>")
    assert pad == pad_token_id(tiny_tokenizer) != tiny_tokenizer.eos_token_id
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]

    cls = make_collator(tiny_tokenizer, "classification")(
        [
            {"input_ids": [5], "attention_mask": [1], "labels": 2},
            {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": 0},
        ]
    )
    assert (
        cls["labels"].tolist() == [2, 0] and cls["labels"].shape == (2,) and cls["labels"].dtype == torch.long
    )
    assert cls["input_ids"].tolist() == [[5, pad], [5, 6]]


def test_collator_falls_back_to_eos_padding(make_tokenizer) -> None:
    tok = make_tokenizer(pad=False)
    assert tok.pad_token is None
    batch = make_collator(tok, "causal_lm")(
        [{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6], [7, tok.eos_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_end_to_end_synthetic_client_batch(chat_tokenizer) -> None:
    splits = build_splits(DataConfig(source="synthetic", partition_field="subject"), "causal_lm", 4)
    tokenized = tokenize_dataset(splits.partitions[0], chat_tokenizer, "causal_lm", 48)
    assert len(tokenized) == len(splits.partitions[0])
    batch = make_collator(chat_tokenizer, "causal_lm")([tokenized[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) > 0).all()


def test_empty_dataset_keeps_schema(tiny_tokenizer) -> None:
    empty = qa(["a"], ["b"]).select([])
    out = tokenize_dataset(empty, tiny_tokenizer, "causal_lm", 16)
    assert len(out) == 0 and out.column_names == COLUMNS
    assert out.features == tokenize_dataset(qa(["a"], ["b"]), tiny_tokenizer, "causal_lm", 16).features
