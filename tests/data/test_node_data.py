"""A deployed node's own data file is its training data, used whole, labelled by the server's classes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from fedlora.config.schema import DataConfig
from fedlora.data import load_node_data
from fedlora.data.node_data import clear_cache
from fedlora.data.partition import FederatedSplits

LABELS = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_cache()


def _write_csv(
    path: Path, rows: list[tuple[str, object]], header: tuple[str, str] = ("text", "label")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _thousand(tmp_path: Path) -> Path:
    return _write_csv(tmp_path / "node.csv", [(f"example text {i}", LABELS[i % 3]) for i in range(1000)])


def test_whole_file_trains_without_heldout(tmp_path: Path) -> None:
    # max_examples and central_test_size are for the shared corpus, not a node's own file.
    cfg = DataConfig(source="files", max_examples=50, central_test_size=500)
    data = load_node_data(cfg, "classification", str(_thousand(tmp_path)), labels=LABELS)
    assert len(data.train) == 1000 and len(data.heldout) == 0
    assert data.train.column_names == ["text", "label"]
    assert data.train.features["label"].names == LABELS
    assert sorted(data.train["text"][:]) == sorted(f"example text {i}" for i in range(1000))


def test_heldout_fraction_splits_like_a_partition(tmp_path: Path) -> None:
    cfg = DataConfig(source="files", seed=7)
    data = load_node_data(
        cfg, "classification", str(_thousand(tmp_path)), heldout_fraction=0.1, labels=LABELS
    )
    assert (len(data.train), len(data.heldout)) == (900, 100)
    assert not set(data.train["text"][:]) & set(data.heldout["text"][:])
    whole = load_node_data(cfg, "classification", str(_thousand(tmp_path)), labels=LABELS).train
    splits = FederatedSplits(
        central_test=whole.select([]), partitions=(whole,), labels=None, group_names=None
    )
    assert data.heldout["text"][:] == splits.client(0, 0.1, 7).heldout["text"][:]


def test_tiny_file_keeps_a_training_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "two.csv", [("one", "a"), ("two", "b")])
    data = load_node_data(DataConfig(), "classification", str(path), heldout_fraction=0.01, labels=LABELS)
    assert (len(data.train), len(data.heldout)) == (1, 1)


def test_labels_follow_the_servers_list(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bc.csv", [("x", "b"), ("y", "c"), ("z", "b")])
    data = load_node_data(DataConfig(), "classification", str(path), labels=LABELS)
    assert dict(zip(data.train["text"][:], data.train["label"][:], strict=True)) == {"x": 1, "y": 2, "z": 1}
    assert data.train.features["label"].int2str(2) == "c"


def test_integer_labels_name_the_same_class_as_the_shared_corpus(tmp_path: Path) -> None:
    # The shared corpus's integer labels 0..3 become class names '0'..'3'; "02" and 2 both name '2'.
    path = _write_csv(tmp_path / "ints.csv", [("x", "02"), ("y", "3"), ("z", 2)])
    data = load_node_data(DataConfig(), "classification", str(path), labels=["0", "1", "2", "3"])
    assert data.train["label"][:] == [2, 3, 2]


def test_unknown_label_names_file_row_and_labels(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bad.csv", [("x", "a"), ("", "b"), ("y", "b"), ("z", "d")])
    with pytest.raises(ValueError) as info:
        load_node_data(DataConfig(), "classification", str(path), labels=LABELS)
    message = str(info.value)
    # Row 2 (blank text) is dropped before labels are checked: 'd' is still reported as data row 4.
    assert str(path) in message and "data row 4" in message and "'d'" in message
    assert "['a', 'b', 'c']" in message


def test_classification_needs_the_servers_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="server's label list is required"):
        load_node_data(DataConfig(), "classification", str(_thousand(tmp_path)))


def test_jsonl_causal_lm_prompt_response(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    rows = [{"q": f"question {i}?", "a": f"answer {i}.", "extra": i} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(source="files", prompt_field="q", response_field="a", max_examples=5)
    data = load_node_data(cfg, "causal_lm", str(path), heldout_fraction=0.1)
    assert (len(data.train), len(data.heldout)) == (18, 2)
    assert data.train.column_names == ["prompt", "response"]
    pairs = {
        p: r
        for part in (data.train, data.heldout)
        for p, r in zip(part["prompt"][:], part["response"][:], strict=True)
    }
    assert pairs == {f"question {i}?": f"answer {i}." for i in range(20)}


def test_missing_column_names_file_and_expected_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "cols.csv", [("x", "a")], header=("sentence", "label"))
    with pytest.raises(ValueError) as info:
        load_node_data(DataConfig(), "classification", str(path), labels=LABELS)
    assert str(path) in str(info.value) and "['text', 'label']" in str(info.value)


def test_empty_file_names_file_and_expected_columns(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_node_data(DataConfig(), "causal_lm", str(path))
    assert str(path) in str(info.value) and "['prompt', 'response']" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_node_data(DataConfig(), "causal_lm", str(tmp_path / "nope.jsonl"))


def test_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "live.csv", [("x", "a"), ("y", "b")])
    first = load_node_data(DataConfig(), "classification", str(path), labels=LABELS)
    assert load_node_data(DataConfig(), "classification", str(path), labels=LABELS) is first
    before = path.stat().st_mtime_ns
    _write_csv(path, [("x", "a"), ("y", "b"), ("z", "c")])
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a distinct mtime even on coarse filesystems
    second = load_node_data(DataConfig(), "classification", str(path), labels=LABELS)
    assert second is not first
    assert second.train["text"][:] == ["x", "y", "z"] and second.train["label"][:] == [0, 1, 2]
