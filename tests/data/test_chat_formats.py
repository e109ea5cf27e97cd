"""``data.format``: detection, canonical rows, ``data.system_prompt`` and file:line errors for bad rows.

Expected values are written out by hand from the rows in each test, not recomputed with the code
under test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pandas as pd
import pytest

from fedlora.config import ConfigError, compose
from fedlora.config.schema import DataConfig
from fedlora.data import clear_caches, load_source
from fedlora.data.partition import build_splits, resolve_partitioner

CHAT = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}], "who": "a"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": " 4 "}, {"role": "user", "content": "and 3+3?"},
                  {"role": "assistant", "content": "6"}], "who": "b"},
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_splits():
    clear_caches()
    yield
    clear_caches()


def write_jsonl(path: Path, rows: list, blank_lines: tuple[int, ...] = ()) -> Path:
    """One JSON value per line; an empty line is inserted before each (1-based) line in ``blank_lines``."""
    lines = []
    for row in rows:
        while len(lines) + 1 in blank_lines:
            lines.append("")
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def files(path: Path, **kw) -> DataConfig:
    return DataConfig(source="files", path=str(path), partitioner="iid", **kw)


# ---------------------------------------------------------------- detection and canonical rows


def test_chat_messages_become_canonical_turns(tmp_path: Path) -> None:
    ds = load_source(files(write_jsonl(tmp_path / "c.jsonl", CHAT), partition_field="who"), "causal_lm")
    assert ds.column_names == ["messages", "who"]
    assert ds[1]["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]  # fmt: skip
    assert ds["who"][:] == ["a", "b"]


def test_sharegpt_equals_the_same_conversation_as_messages(tmp_path: Path) -> None:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    share = [{"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in r["messages"]]}
             for r in CHAT]  # fmt: skip
    share[0]["conversations"][0]["from"] = "user"  # also accepted
    a = load_source(files(write_jsonl(tmp_path / "m.jsonl", CHAT)), "causal_lm")
    b = load_source(files(write_jsonl(tmp_path / "s.jsonl", share)), "causal_lm")
    assert b.column_names == ["messages"] and b["messages"][:] == a["messages"][:]


def test_alpaca_input_joins_the_instruction(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate to French.", "input": "the cat", "output": "le chat"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Count.", "output": "1 2 3"},  # no input key at all
    ]
    ds = load_source(files(write_jsonl(tmp_path / "a.jsonl", rows)), "causal_lm")
    assert ds.to_dict() == {
        "prompt": ["Translate to French.\n\nthe cat", "Say hi.", "Count."],
        "response": ["le chat", "hi", "1 2 3"],
    }
    # CSV without an input column, with tatsu-lab/alpaca's extra "text" column: still alpaca
    pd.DataFrame([{"instruction": "Say hi.", "output": "hi", "text": "### whole"}]).to_csv(
        tmp_path / "a.csv", index=False
    )
    assert load_source(files(tmp_path / "a.csv"), "causal_lm").to_dict() == {"prompt": ["Say hi."],
                                                                              "response": ["hi"]}  # fmt: skip


def test_text_format_and_blank_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"text": "once upon a time"}, {"text": "  "}, {"text": "the end"}]
    with caplog.at_level(logging.WARNING, logger="fedlora.data.chat_formats"):
        ds = load_source(files(write_jsonl(tmp_path / "t.jsonl", rows)), "causal_lm")
    assert ds.to_dict() == {"text": ["once upon a time", "the end"]}
    assert f"{tmp_path / 't.jsonl'}:2" in caplog.text and "dropped 1 of 3 rows" in caplog.text


def test_forced_format_and_detection_order(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "response": "r", "text": "plain", "messages": CHAT[0]["messages"]}]
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    assert load_source(files(path), "causal_lm").column_names == ["prompt", "response"]  # today's first
    assert load_source(files(path, format="chat"), "causal_lm").column_names == ["messages"]
    assert load_source(files(path, format="text"), "causal_lm")["text"][:] == ["plain"]
    with pytest.raises(ValueError, match=r"data\.format: 'alpaca' needs columns 'instruction' and 'output'"):
        load_source(files(path, format="alpaca"), "causal_lm")
    with pytest.raises(ValueError, match=r"data\.format: 'chat' is for model\.task='causal_lm'"):
        load_source(files(path, format="chat"), "classification")
    with pytest.raises(ValueError, match=r"data\.format: 'chat' applies to data\.source=files/hf"):
        load_source(DataConfig(source="synthetic", format="chat"), "causal_lm")
    nothing = write_jsonl(tmp_path / "none.jsonl", [{"q": "a", "a": "b"}])
    with pytest.raises(ValueError, match=r"data\.prompt_field: column 'prompt' not in .*no other causal"):
        load_source(files(nothing), "causal_lm")


def test_system_prompt_applies_to_every_format(tmp_path: Path) -> None:
    system = {"role": "system", "content": "You are terse."}
    terse = "You are terse."
    pairs = load_source(DataConfig(source="synthetic", system_prompt=terse, max_examples=3), "causal_lm")
    plain = load_source(DataConfig(source="synthetic", max_examples=3), "causal_lm")
    assert pairs.column_names == ["messages", "subject"]
    assert pairs["messages"][:] == [
        [system, {"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, r in zip(plain["prompt"][:], plain["response"][:], strict=True)
    ]
    chat = load_source(files(write_jsonl(tmp_path / "c.jsonl", CHAT), system_prompt=terse), "causal_lm")
    assert chat[0]["messages"][0] == system  # added where there was no system turn
    assert chat[1]["messages"][0] == {"role": "system", "content": "be brief"}  # its own one kept
    alpaca = [{"instruction": "Say hi.", "input": "to Bo", "output": "hi Bo"}]
    ds = load_source(files(write_jsonl(tmp_path / "a.jsonl", alpaca), system_prompt=terse), "causal_lm")
    assert ds[0]["messages"][:2] == [system, {"role": "user", "content": "Say hi.\n\nto Bo"}]
    with pytest.raises(ValueError, match=r"data\.system_prompt: does not apply to plain-text rows"):
        load_source(files(write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}]), system_prompt="s"), "causal_lm")


def test_trailing_user_turns_are_cut_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    row = {"messages": [*CHAT[0]["messages"], {"role": "user", "content": "bye"}]}
    with caplog.at_level(logging.WARNING, logger="fedlora.data.chat_formats"):
        ds = load_source(files(write_jsonl(tmp_path / "c.jsonl", [row])), "causal_lm")
    assert ds[0]["messages"] == CHAT[0]["messages"]
    assert "1 conversations end with non-assistant turns" in caplog.text


# ---------------------------------------------------------------- malformed rows: file and line


GOOD = CHAT[0]["messages"]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"messages": [GOOD[0], {"role": "bot", "content": "x"}]},
         "messages[1].role: expected one of system/user/assistant, got 'bot'"),
        ({"messages": [GOOD[0]]},
         "messages: the conversation has no assistant turn (roles ['user']); nothing to learn"),
        ({"messages": "hello"}, "messages: expected a list of turns ({role, content} objects), got a string"),
        ({"messages": [GOOD[0], "hi"]},
         "messages[1]: expected an object with a role and a content, got a string"),
        ({"messages": [GOOD[0], {"role": "assistant", "content": 5}]},
         "messages[1].content: expected a string, got a number (5)"),
        ({"messages": [GOOD[0], {"role": "assistant", "content": "  "}]},
         "messages[1].content: empty assistant turn"),
        ({"messages": [*GOOD, {"role": "system", "content": "late"}, GOOD[1]]},
         "messages[2].role: a system turn is only allowed as the first turn"),
        ({"messages": [GOOD[0], {"content": "x"}]},
         "messages[1].role: missing; expected one of system/user/assistant"),
    ],
)  # fmt: skip
def test_bad_chat_row_is_named_by_file_and_line(tmp_path: Path, bad: dict, expected: str) -> None:
    rows = [CHAT[0], CHAT[1], CHAT[0], bad, CHAT[1]]
    path = write_jsonl(tmp_path / "chat.jsonl", rows, blank_lines=(2, 4))  # bad row: 4th row, on line 6
    with pytest.raises(ValueError) as err:
        load_source(files(path), "causal_lm")
    assert str(err.value) == f"data.path: {path}:6: {expected}"


def test_sharegpt_and_alpaca_errors(tmp_path: Path) -> None:
    human = {"from": "human", "value": "a"}
    share = [{"conversations": [human, {"from": "gpt", "value": "b"}]},
             {"conversations": [human, {"from": "robot", "value": "b"}]}]  # fmt: skip
    with pytest.raises(ValueError) as err:
        load_source(files(write_jsonl(tmp_path / "s.jsonl", share)), "causal_lm")
    assert str(err.value).endswith(
        "s.jsonl:2: conversations[1].from: expected one of system/human/gpt/user/assistant, got 'robot'"
    )
    alpaca = [{"instruction": "a", "output": "b"}, {"input": "x", "output": "y"},
              {"instruction": "c", "output": ""}, {"instruction": "d", "output": 3}]  # fmt: skip
    with pytest.raises(ValueError) as err:
        load_source(files(write_jsonl(tmp_path / "a.jsonl", alpaca)), "causal_lm")
    assert str(err.value) == (
        f"data.path: {tmp_path / 'a.jsonl'}:2: instruction: missing (expected a non-empty string) "
        f"(2 more malformed rows: {tmp_path / 'a.jsonl'}:3, {tmp_path / 'a.jsonl'}:4)"
    )


def test_csv_and_parquet_errors_say_row(tmp_path: Path) -> None:
    pd.DataFrame([{"instruction": "a", "output": "b"}, {"instruction": None, "output": "c"}]).to_csv(
        tmp_path / "a.csv", index=False
    )
    with pytest.raises(ValueError, match=r"^data\.path: file '.*a\.csv' row 2: instruction: missing"):
        load_source(files(tmp_path / "a.csv"), "causal_lm")
    datasets.Dataset.from_list(CHAT[:1] * 2 + [{"messages": [GOOD[0]], "who": "c"}]).to_parquet(
        str(tmp_path / "c.parquet")
    )
    with pytest.raises(ValueError, match=r"^data\.path: file '.*c\.parquet' row 3: messages: the conv"):
        load_source(files(tmp_path / "c.parquet"), "causal_lm")


def test_node_data_file_reads_chat_rows(tmp_path: Path) -> None:
    from fedlora.data import load_node_data

    path = write_jsonl(tmp_path / "node.jsonl", CHAT * 3)
    data = load_node_data(DataConfig(source="files"), "causal_lm", str(path), heldout_fraction=0.2)
    assert data.train.column_names == ["messages"] and len(data.train) + len(data.heldout) == 6
    bad = write_jsonl(tmp_path / "bad.jsonl", [CHAT[0], {"messages": [GOOD[0]]}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: messages: the conversation has no assistant turn"):
        load_node_data(DataConfig(source="files"), "causal_lm", str(bad))


# ---------------------------------------------------------------- data=files for a causal LM


def test_data_files_defaults_work_for_causal_lm(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT * 20)
    cfg = compose(["preset=smoke_llm", "data=files", f"data.path={path}"])
    assert cfg.data.partitioner == "auto" and resolve_partitioner("auto", "causal_lm") == "iid"
    assert resolve_partitioner("auto", "classification") == "dirichlet"
    splits = build_splits(cfg.data, "causal_lm", 2)
    assert [len(p) for p in splits.partitions] == [16, 16] and len(splits.central_test) == 8
    with pytest.raises(ConfigError, match=r"data\.partitioner: 'dirichlet' splits by label"):
        compose(["preset=smoke_llm", "data=files", f"data.path={path}", "data.partitioner=dirichlet"])
    classify = compose(["preset=smoke", "data=files", f"data.path={path}"])
    assert resolve_partitioner(classify.data.partitioner, classify.model.task) == "dirichlet"
