"""User files that fail early and clearly, and the data preflight (:func:`fedlora.data.checks.check_data`).

Every bad input must give ONE line that starts with the config field and names the file; unusable
rows are dropped with a logged count; the preflight reports problems instead of raising.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import datasets
import pandas as pd
import pytest

from fedlora.config import compose
from fedlora.config.schema import DataConfig
from fedlora.data import clear_caches, load_source
from fedlora.data.checks import DataReport, check_data

TOPICS = ["business", "sport", "tech"]


@pytest.fixture(autouse=True)
def _fresh_splits():
    """build_splits is memoised on the config; tests reuse file names, so forget between tests."""
    clear_caches()
    yield
    clear_caches()


def _files(path: Path, **kw: str) -> DataConfig:
    return DataConfig(source="files", path=str(path), partitioner="iid", **kw)


def _topic_rows(n: int) -> list[dict[str, str]]:
    return [{"text": f"news item {i} about {TOPICS[i % 3]} today", "label": TOPICS[i % 3]} for i in range(n)]


def _run_cfg(path: Path, *extra: str):
    return compose(["preset=smoke", "data=files", f"data.path={path}", *extra])


# ---------------------------------------------------------------- labels of every format


def test_string_labels_from_csv_parquet_jsonl_and_saved_dir(tmp_path: Path) -> None:
    rows = _topic_rows(9)
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    saved = datasets.Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["label"].tolist()})
    saved.cast_column("label", datasets.Value("large_string")).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.csv", "d.parquet", "d.jsonl", "saved"):
        ds = load_source(_files(tmp_path / name), "classification")
        assert ds.features["label"].names == TOPICS, name
        assert [ds.features["label"].int2str(v) for v in ds["label"][:]] == frame["label"].tolist(), name
        assert ds.column_names == ["text", "label"], name


def test_integer_labels_stay_integer_classes_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "ints.csv").write_text("text,label\na,2\nb,0\nc,2\n", encoding="utf-8")
    (tmp_path / "strs.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "label": v}) for t, v in [("a", "2"), ("b", "0"), ("c", " 2")]),
        encoding="utf-8",
    )
    pd.DataFrame({"text": ["a", "b", "c"], "label": [2.0, 0.0, 2.0]}).to_parquet(tmp_path / "floats.parquet")
    for name in ("ints.csv", "strs.jsonl", "floats.parquet"):
        ds = load_source(_files(tmp_path / name), "classification")
        assert ds.features["label"].names == ["0", "1", "2"], name
        assert ds["label"][:] == [2, 0, 2], name


def test_mixed_number_and_string_json_labels_are_one_class_set(tmp_path: Path) -> None:
    lines = [{"text": "a", "label": 1}, {"text": "b", "label": "sport"}, {"text": "c", "label": "1"}]
    (tmp_path / "mix.jsonl").write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    ds = load_source(_files(tmp_path / "mix.jsonl"), "classification")
    assert ds.features["label"].names == ["1", "sport"]
    assert ds["label"][:] == [0, 1, 0]


def test_non_integer_number_labels_are_refused(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["a", "b"], "label": [0.5, 1.0]}).to_parquet(tmp_path / "f.parquet")
    with pytest.raises(ValueError, match=r"^data\.label_field: column 'label' in file '.*f\.parquet' has "
                       r"non-integer numbers \(e\.g\. 0\.5\)"):  # fmt: skip
        load_source(_files(tmp_path / "f.parquet"), "classification")


def test_blank_labels_and_texts_are_dropped_with_a_count(tmp_path: Path, caplog) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "text,label\ngood one,business\nno label,\nspace label, \n ,sport\nfine,sport\nlast,tech\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="fedlora.data.files"):
        ds = load_source(_files(path), "classification")
    assert ds["text"][:] == ["good one", "fine", "last"]
    assert ds.features["label"].names == TOPICS  # never an empty-string class
    messages = [r.getMessage() for r in caplog.records]
    label_msg = next(m for m in messages if "column 'label'" in m)
    text_msg = next(m for m in messages if "column 'text'" in m)
    assert str(path) in label_msg and "dropped 2 of 6 rows" in label_msg and "data.label_field" in label_msg
    assert "data rows 2, 3" in label_msg
    assert "dropped 1 of 6 rows" in text_msg and "data.text_field" in text_msg


def test_nan_labels_in_parquet_and_csv_are_dropped(tmp_path: Path, caplog) -> None:
    pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, float("nan"), 0.0]}).to_parquet(
        tmp_path / "n.parquet"
    )
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", None, "y"]}).to_parquet(tmp_path / "s.parquet")
    with caplog.at_level(logging.WARNING, logger="fedlora.data.files"):
        nums = load_source(_files(tmp_path / "n.parquet"), "classification")
        strs = load_source(_files(tmp_path / "s.parquet"), "classification")
    assert nums["label"][:] == [1, 0] and nums.features["label"].names == ["0", "1"]
    assert strs.features["label"].names == ["x", "y"] and strs["text"][:] == ["a", "c"]
    assert sum("dropped 1 of 3 rows" in r.getMessage() for r in caplog.records) == 2


def test_missing_prompt_or_response_dropped_for_causal_lm(tmp_path: Path, caplog) -> None:
    rows = [{"q": "1+1?", "a": "2"}, {"q": "", "a": "4"}, {"q": "3+3?"}, {"q": "4+4?", "a": "8"}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="fedlora.data.files"):
        ds = load_source(_files(tmp_path / "qa.jsonl", prompt_field="q", response_field="a"), "causal_lm")
    assert ds.to_dict() == {"prompt": ["1+1?", "4+4?"], "response": ["2", "8"]}
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "column 'q' (data.prompt_field)" in messages and "column 'a' (data.response_field)" in messages


def test_a_label_column_without_any_value_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,\nb,\n", encoding="utf-8")
    expected = r"^data\.label_field: column 'label' is empty or missing in all 2 rows of file '.*d\.csv'"
    with pytest.raises(ValueError, match=expected):
        load_source(_files(tmp_path / "d.csv"), "classification")


# ---------------------------------------------------------------- unreadable files: one clear line


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", b"", r"is empty \(0 bytes\); expected one JSON object per line"),
        ("blank.jsonl", b"\n\n  \n", r"has no data rows .*; expected one JSON object per line"),
        ("header.csv", b"text,label\n", r"has no data rows \(only a header or blank lines\); expected "
                                        r"comma-separated UTF-8 text with a header row"),
        ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"\n{"text": "c"}\n',
         r"is not readable as jsonl: line 2 column \d+: Expecting ',' delimiter; expected one JSON object"),
        ("scalar.jsonl", b'{"text": "a", "label": "x"}\n\n[1, 2]\n',
         r"is not readable as jsonl: line 3 is a JSON list, not an object"),
        ("bad.json", b'[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]',
         r"is not readable as json: line 2 column \d+: Expecting ','"),
        ("binary.csv", None, r"is not readable as csv: line \d+ is not UTF-8 text \(byte 0x[0-9a-f]{2}\)"),
        ("latin1.csv", "text,label\ncafé,food\n".encode("latin-1"), r"line 2 is not UTF-8 text \(byte 0xe9"),
        ("binary.jsonl", None, r"is not readable as jsonl: line \d+ is not UTF-8 text"),
        ("binary.parquet", None, r"is not readable as parquet: ArrowInvalid: Parquet magic bytes not found"),
    ],
)  # fmt: skip
def test_unreadable_files_give_one_clear_line(tmp_path: Path, name: str, content: bytes | None,
                                              expected: str) -> None:  # fmt: skip
    path = tmp_path / name
    path.write_bytes(content if content is not None else b"\xff\xfe\x00" + os.urandom(2000))
    with pytest.raises(ValueError) as info:
        load_source(_files(path), "classification")
    message = str(info.value)
    assert message.startswith(f"data.path: file '{path}' ")
    assert "\n" not in message and len(message) < 300
    assert re.search(expected, message), message


def test_semicolon_csv_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text;label\na;x\nb;y\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^data\.text_field: column 'text' not in .*separated by ';'"):
        load_source(_files(tmp_path / "d.csv"), "classification")


def test_corrupt_saved_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^data\.path: cannot load saved dataset '.*'"):
        load_source(_files(tmp_path), "classification")


# ---------------------------------------------------------------- check_data


def test_check_data_reports_truncation_with_numbers(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [{"text": " ".join(["good flight"] * (1 + i % 12)), "label": TOPICS[i % 3]} for i in range(60)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = _run_cfg(path, "data.partitioner=iid", "data.central_test_size=10", "model.max_length=16")
    report = check_data(cfg, tokenizer=tiny_tokenizer)
    assert report.problems == [] and report.ok
    lengths = sorted(len(tiny_tokenizer(r["text"])["input_ids"]) for r in rows)
    cut = sum(n > 16 for n in lengths)
    assert 0 < cut < len(rows)
    warning = next(w for w in report.warnings if w.startswith("model.max_length:"))
    assert f"{cut} of all 60 examples ({cut / 60:.1%}) are longer than 16 tokens" in warning
    assert f"longest {lengths[-1]}" in warning and "median" in warning
    again = check_data(cfg, tokenizer=tiny_tokenizer, sample_size=20)
    assert "20 examples sampled from 60" in next(
        w for w in again.warnings if w.startswith("model.max_length")
    )


def test_check_data_causal_counts_prompt_plus_response(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [{"prompt": f"what is {i}?", "response": "it is " + "big " * (i % 20)} for i in range(60)]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = compose(["preset=smoke_llm", "data=files", f"data.path={path}", "data.partitioner=iid",
                   "data.central_test_size=10", "model.max_length=24"])  # fmt: skip
    report = check_data(cfg, tokenizer=tiny_tokenizer)
    assert report.problems == []
    warning = next(w for w in report.warnings if w.startswith("model.max_length:"))
    assert "prompt+response tokens" in warning and "of all 60 examples" in warning


def test_check_data_names_labels_no_client_trains_on(tmp_path: Path, tiny_tokenizer) -> None:
    # 'tech' occurs only in group 'z'; with 2 clients by_field keeps groups x and y, so 'tech'
    # reaches the (stratified) central test set but no client.
    rows = [{"text": f"market {i}", "label": "business", "g": "x"} for i in range(40)]
    rows += [{"text": f"match {i}", "label": "sport", "g": "y"} for i in range(30)]
    rows += [{"text": f"chip {i}", "label": "tech", "g": "z"} for i in range(10)]
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = _run_cfg(path, "data.partitioner=by_field", "data.partition_field=g", "data.central_test_size=16")
    report = check_data(cfg, tokenizer=tiny_tokenizer)
    assert report.problems == []
    test_only = next(w for w in report.warnings if "central test set but in no client" in w)
    assert test_only.startswith("data.label_field: label(s) 'tech' (2 rows)")
    single = next(w for w in report.warnings if "only one client's training rows" in w)
    assert "'business' (partition 0 ('x')" in single and "'sport' (partition 1 ('y')" in single


def test_check_data_too_small_for_ten_clients_is_a_problem_not_a_crash(
    tmp_path: Path, tiny_tokenizer
) -> None:
    path = tmp_path / "small.csv"
    pd.DataFrame(_topic_rows(8)).to_csv(path, index=False)
    cfg = _run_cfg(path, "federation.num_clients=10", "federation.min_train_clients=2")
    report = check_data(cfg, tokenizer=tiny_tokenizer)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        "federation.num_clients: 10 partitions requested but only 7 examples"
    )
    assert isinstance(report, DataReport) and not report.ok


def test_check_data_warns_on_partitions_smaller_than_a_batch(tmp_path: Path, tiny_tokenizer) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame(_topic_rows(30)).to_csv(path, index=False)
    cfg = _run_cfg(path, "data.partitioner=iid", "data.central_test_size=6", "federation.num_clients=4")
    report = check_data(cfg, tokenizer=tiny_tokenizer)
    assert report.problems == []
    small = next(w for w in report.warnings if w.startswith("train.batch_size:"))
    assert "4 of 4 client partitions have fewer training rows than train.batch_size=8" in small


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", b"", "is empty (0 bytes)"),
        ("header.csv", b"text,label\n", "has no data rows"),
        ("missing.csv", None, "not found"),
    ],
)
def test_check_data_turns_load_errors_into_problems(
    tmp_path: Path, tiny_tokenizer, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    report = check_data(_run_cfg(path), tokenizer=tiny_tokenizer)
    assert len(report.problems) == 1 and report.warnings == []
    assert report.problems[0].startswith(f"data.path: file '{path}'") and expected in report.problems[0]


def test_check_data_loads_the_configured_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame(_topic_rows(40)).to_csv(path, index=False)
    report = check_data(_run_cfg(path, "data.partitioner=iid", "data.central_test_size=8"))
    assert report.problems == []


def test_check_data_names_classes_without_examples(tmp_path: Path, tiny_tokenizer) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(30)], "label": [0, 2] * 15}).to_csv(path, index=False)
    report = check_data(
        _run_cfg(path, "data.partitioner=iid", "data.central_test_size=6"), tokenizer=tiny_tokenizer
    )
    unused = next(w for w in report.warnings if "have no example" in w)
    assert unused.startswith("data.label_field: 1 of 3 classes have no example") and "'1'" in unused
