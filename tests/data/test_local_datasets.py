"""Local Hugging Face dataset directories load offline; a hub id that is not cached fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from fedlora.config.schema import DataConfig
from fedlora.data import clear_caches, load_source
from fedlora.data.hub import load_hub

TRAIN = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(4)
]
TEST = [{"messages": [{"role": "user", "content": "tq"}, {"role": "assistant", "content": "ta"}]}]


@pytest.fixture(autouse=True)
def _fresh():
    clear_caches()
    yield
    clear_caches()


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_saved_chat_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets.Dataset.from_list(TRAIN).save_to_disk(str(tmp_path / "one"))
    splits = {"train": datasets.Dataset.from_list(TRAIN), "test": datasets.Dataset.from_list(TEST)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    for source in ("files", "hf"):
        ds = load_source(DataConfig(source=source, path=str(tmp_path / "one")), "causal_lm")
        assert ds["messages"][:] == [r["messages"] for r in TRAIN]
        test = load_source(DataConfig(source=source, path=str(tmp_path / "dict"), split="test"), "causal_lm")
        assert test["messages"][:] == [TEST[0]["messages"]]
        bad_split = DataConfig(source=source, path=str(tmp_path / "dict"), split="validation")
        with pytest.raises(ValueError, match=r"data\.split: split 'validation' not in saved dataset"):
            load_source(bad_split, "causal_lm")


def test_hf_directory_of_data_files_loads_offline(tmp_path: Path) -> None:
    jsonl(tmp_path / "repo" / "train.jsonl", TRAIN)
    jsonl(tmp_path / "repo" / "test.jsonl", TEST)
    ds = load_source(DataConfig(source="hf", path=str(tmp_path / "repo"), split="test"), "causal_lm")
    assert ds["messages"][:] == [TEST[0]["messages"]]
    train = load_source(DataConfig(source="hf", path=str(tmp_path / "repo")), "causal_lm")
    assert train["messages"][:] == [r["messages"] for r in TRAIN]
    with pytest.raises(ValueError, match=r"data\.split: cannot load split 'dev' of directory"):
        load_hub(DataConfig(source="hf", path=str(tmp_path / "repo"), split="dev"))
    # the layout of a dataset repository downloaded from the hub: data/<split>-*.parquet
    shard = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    datasets.Dataset.from_list(TRAIN).to_parquet(str(shard))
    ds = load_source(DataConfig(source="hf", path=str(tmp_path / "hub")), "causal_lm")
    assert ds["messages"][:] == [r["messages"] for r in TRAIN]
    jsonl(tmp_path / "single.jsonl", TRAIN)  # a single file works with data=hf too
    assert len(load_source(DataConfig(source="hf", path=str(tmp_path / "single.jsonl")), "causal_lm")) == 4


def test_missing_local_path_and_uncached_hub_id(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data\.path: directory '.*empty' holds no data files"):
        load_hub(DataConfig(source="hf", path=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match=r"data\.path: local dataset directory or file '.*nope' not"):
        load_hub(DataConfig(source="hf", path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError) as err:
        load_source(DataConfig(source="hf", path="someone/uncached-chat-set"), "causal_lm")
    message = str(err.value)
    assert message.startswith(
        "data.path: hub dataset 'someone/uncached-chat-set' (data.split='train') is not available offline"
    )
    assert "load_dataset('someone/uncached-chat-set').save_to_disk('DIR')" in message
    assert "set data.path=DIR" in message
