"""Tokens and loss masks of every causal-LM format, and the prompt/reference used for generation.

The expected token ids come from tokenizing hand-written strings (what the template or the
``### Question:`` layout must produce), never from the code under test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest

from fedlora.config import compose
from fedlora.config.schema import DataConfig
from fedlora.data import IGNORE_INDEX, clear_caches, load_source, tokenize_dataset
from fedlora.data.chat_formats import CHAT_FEATURE
from fedlora.data.chat_tokens import prompt_and_reference, prompt_ids_and_reference
from fedlora.data.checks import check_data

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SYSTEM, USER1, ANSWER1 = "be nice", "hello there", "hi, how are you"
USER2, ANSWER2 = "the quick fox", "jumps over the lazy dog"
CONVERSATION = [
    {"role": "system", "content": SYSTEM}, {"role": "user", "content": USER1},
    {"role": "assistant", "content": ANSWER1}, {"role": "user", "content": USER2},
    {"role": "assistant", "content": ANSWER2},
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh():
    clear_caches()
    yield
    clear_caches()


def with_template(tok, template: str, specials: list[str]):
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    return tok


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chats(*conversations: list[dict]) -> datasets.Dataset:
    features = datasets.Features({"messages": CHAT_FEATURE})
    return datasets.Dataset.from_dict({"messages": list(conversations)}, features=features)


def labelled_runs(row: dict) -> list[list[int]]:
    """The contiguous runs of labelled tokens; each label must equal its input token."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def expect(tok, pieces: list[tuple[str, bool]], bos: bool = False) -> tuple[list[int], list[int]]:
    """input_ids and labels of hand-written (text, learned) pieces, each tokenized on its own."""
    input_ids = [tok.bos_token_id] if bos else []
    labels = [IGNORE_INDEX] * len(input_ids)
    for text, learned in pieces:
        piece = ids(tok, text)
        input_ids += piece
        labels += piece if learned else [IGNORE_INDEX] * len(piece)
    return input_ids, labels


# ---------------------------------------------------------------- multi-turn chat


def test_multi_turn_without_template_labels_only_assistant_turns(tiny_tokenizer) -> None:
    row = tokenize_dataset(chats(CONVERSATION), tiny_tokenizer, "causal_lm", 512)[0]
    input_ids, labels = expect(tiny_tokenizer, [
        (f"### System:\n{SYSTEM}\n### Question:\n{USER1}\n### Answer:\n", False), (f"{ANSWER1}</s>", True),
        (f"\n### Question:\n{USER2}\n### Answer:\n", False), (f"{ANSWER2}</s>", True),
    ])  # fmt: skip
    assert row["input_ids"] == input_ids and row["labels"] == labels
    assert [tiny_tokenizer.decode(run) for run in labelled_runs(row)] == [f"{ANSWER1}</s>", f"{ANSWER2}</s>"]


@pytest.mark.parametrize(
    ("template", "specials", "end", "turn", "bos"),
    [
        (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|im_start|>{}\n{}<|im_end|>\n", False),
        (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>",
         "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", True),
    ],
)  # fmt: skip
def test_multi_turn_with_template_labels_only_assistant_turns(
    make_tokenizer, template: str, specials: list[str], end: str, turn: str, bos: bool
) -> None:
    tok = with_template(make_tokenizer(), template, specials)
    gen = turn.split("{}")[0].format("") + "assistant" + turn.split("{}")[1]
    row = tokenize_dataset(chats(CONVERSATION), tok, "causal_lm", 512)[0]
    first = ("<s>" if bos else "") + turn.format("system", SYSTEM) + turn.format("user", USER1) + gen
    between = turn[turn.index(end) + len(end):] + turn.format("user", USER2) + gen  # after the 1st answer
    pieces = [(first, False), (ANSWER1 + end, True), (between, False), (ANSWER2 + end, True)]
    input_ids, labels = expect(tok, pieces)
    assert row["input_ids"] == input_ids and row["labels"] == labels
    assert [tok.decode(run) for run in labelled_runs(row)] == [ANSWER1 + end, ANSWER2 + end]
    # the sequence is the template's own rendering of the whole conversation (up to the last end token)
    whole = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert whole.startswith(tok.decode(row["input_ids"]))


def test_single_turn_chat_equals_prompt_response(tiny_tokenizer, make_tokenizer) -> None:
    pair = datasets.Dataset.from_dict({"prompt": [USER1], "response": [ANSWER1]})
    chat = chats([{"role": "user", "content": USER1}, {"role": "assistant", "content": ANSWER1}])
    for tok in (tiny_tokenizer, with_template(make_tokenizer(), CHATML, ["<|im_start|>", "<|im_end|>"])):
        expected = tokenize_dataset(pair, tok, "causal_lm", 64)[0]
        assert tokenize_dataset(chat, tok, "causal_lm", 64)[0] == expected


def test_sharegpt_file_tokenizes_like_messages_file(tmp_path: Path, tiny_tokenizer) -> None:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    share = {"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in CONVERSATION]}
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n", encoding="utf-8")
    (tmp_path / "s.jsonl").write_text(json.dumps(share) + "\n", encoding="utf-8")
    out = [
        tokenize_dataset(load_source(DataConfig(source="files", path=str(tmp_path / n)), "causal_lm"),
                         tiny_tokenizer, "causal_lm", 512)[0]
        for n in ("m.jsonl", "s.jsonl")
    ]  # fmt: skip
    assert out[0] == out[1] and len(labelled_runs(out[0])) == 2


def test_multi_turn_truncation_cuts_the_earliest_tokens(tiny_tokenizer) -> None:
    full = tokenize_dataset(chats(CONVERSATION), tiny_tokenizer, "causal_lm", 512)[0]
    last = ids(tiny_tokenizer, f"{ANSWER2}</s>")
    limit = len(full["input_ids"]) - 5
    row = tokenize_dataset(chats(CONVERSATION), tiny_tokenizer, "causal_lm", limit)[0]
    assert row["input_ids"] == full["input_ids"][5:] and row["labels"] == full["labels"][5:]
    assert row["labels"][-len(last):] == last and len(labelled_runs(row)) == 2  # both answers survive


# ---------------------------------------------------------------- alpaca and text


def test_alpaca_input_tokens_are_in_the_masked_prompt(tmp_path: Path, tiny_tokenizer) -> None:
    row = {"instruction": "What is the color?", "input": "the big apple", "output": "It is red."}
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    ds = load_source(DataConfig(source="files", path=str(tmp_path / "a.jsonl")), "causal_lm")
    out = tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 128)[0]
    input_ids, labels = expect(tiny_tokenizer, [
        ("### Question:\nWhat is the color?\n\nthe big apple\n### Answer:\n", False),
        ("It is red.</s>", True),
    ])  # fmt: skip
    assert out["input_ids"] == input_ids and out["labels"] == labels
    masked = [t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label == IGNORE_INDEX]
    assert "the big apple" in tiny_tokenizer.decode(masked)
    assert "apple" not in tiny_tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX])


def test_text_rows_label_every_token(tiny_tokenizer) -> None:
    ds = datasets.Dataset.from_dict({"text": ["the quick brown fox jumps", "good flight"]})
    out = tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 64)
    for row, text in zip(out, ds["text"][:], strict=True):
        assert row["input_ids"] == ids(tiny_tokenizer, text + "</s>") == row["labels"]
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    cut = tokenize_dataset(ds, tiny_tokenizer, "causal_lm", 3)[0]
    assert cut["input_ids"] == ids(tiny_tokenizer, "the quick brown fox jumps")[:3] == cut["labels"]


# ---------------------------------------------------------------- generation prompts


def test_prompt_and_reference(tiny_tokenizer, make_tokenizer) -> None:
    prompt, reference = prompt_and_reference({"messages": CONVERSATION}, tiny_tokenizer)
    assert reference == ANSWER2
    assert prompt == (f"### System:\n{SYSTEM}\n### Question:\n{USER1}\n### Answer:\n{ANSWER1}</s>\n"
                      f"### Question:\n{USER2}\n### Answer:\n")  # fmt: skip
    chatml = with_template(make_tokenizer(), CHATML, ["<|im_start|>", "<|im_end|>"])
    for tok in (tiny_tokenizer, chatml):
        row = tokenize_dataset(chats(CONVERSATION), tok, "causal_lm", 512)[0]
        prompt_ids, reference = prompt_ids_and_reference({"messages": CONVERSATION}, tok)
        end = "</s>" if tok is tiny_tokenizer else "<|im_end|>"
        n = len(row["input_ids"]) - len(ids(tok, ANSWER2 + end))
        assert prompt_ids == row["input_ids"][:n] and reference == ANSWER2  # training's exact prefix
        assert ids(tok, prompt_and_reference({"messages": CONVERSATION}, tok)[0]) == prompt_ids
    assert prompt_and_reference({"prompt": USER1, "response": ANSWER1}, chatml) == (
        f"<|im_start|>user\n{USER1}<|im_end|>\n<|im_start|>assistant\n", ANSWER1
    )
    with pytest.raises(ValueError, match=r"plain-text rows, data\.format=text, have no prompt"):
        prompt_and_reference({"text": "abc"}, chatml)


# ---------------------------------------------------------------- templates that do not fit


def test_template_that_rewrites_history_learns_the_last_turn(make_tokenizer, caplog) -> None:
    counting = "[{{ messages | length }}]" + CHATML  # every rendering starts differently
    tok = with_template(make_tokenizer(), counting, ["<|im_start|>", "<|im_end|>"])
    with caplog.at_level(logging.WARNING, logger="fedlora.data.chat_tokens"):
        row = tokenize_dataset(chats(CONVERSATION), tok, "causal_lm", 512)[0]
    assert "1 of 1 conversations are learned on their last assistant turn only" in caplog.text
    assert [tok.decode(run) for run in labelled_runs(row)] == [ANSWER2 + "<|im_end|>"]
    assert row["input_ids"][: -len(labelled_runs(row)[0])] == ids(tok, tok.apply_chat_template(
        CONVERSATION[:4], add_generation_prompt=True, tokenize=False))  # fmt: skip


def test_template_refusing_a_system_turn_is_a_preflight_problem(tmp_path: Path, make_tokenizer) -> None:
    refuses = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
               "{% endif %}" + CHATML)  # fmt: skip
    tok = with_template(make_tokenizer(), refuses, ["<|im_start|>", "<|im_end|>"])
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(30)]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    base = ["preset=smoke_llm", "data=files", f"data.path={tmp_path / 'qa.jsonl'}"]
    assert check_data(compose(base), tokenizer=tok).ok
    report = check_data(compose([*base, "data.system_prompt=Be brief."]), tokenizer=tok)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("data.format: the chat template of tokenizer")
    assert "roles ['system', 'user']" in report.problems[0]
    assert "System role not supported" in report.problems[0]
