"""FOLDOC acronym expansions: which entries count as acronyms, what the answer is, and the dataset
built from a dictd file (the same tiny dictionary format as the FOLDOC source tests)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from fedlora.config.schema import DataConfig
from fedlora.data.foldoc_acronyms import expansion_of
from fedlora.data.sources import load_source
from tests.data.test_data_sources import _b64  # the dictd offset encoder of the FOLDOC source tests


@pytest.mark.parametrize(
    ("term", "definition", "expected"),
    [
        ("TCP", "Transmission Control Protocol. The reliable transport.", "Transmission Control Protocol"),
        ("ISP", "Internet Service Provider (ISP) A company that sells access.", "Internet Service Provider"),
        # the initials of the capitalised words spell the term; "language" and "with" are skipped
        ("SAME", "Standard ANSI Module language with Extensions; a language.",
         "Standard ANSI Module language with Extensions"),
        # a hyphen splits words: Role-Playing Game -> R, P, G
        ("RPG", "Role-Playing Game: a game.", "Role-Playing Game"),
        # a jargon-file pronunciation and usage tag before the expansion are dropped
        ("YAUN", "/yawn/ [Usenet] Yet Another Unix Nerd. A joke.", "Yet Another Unix Nerd"),
        ("RTM", "[Usenet] Read The Manual.", "Read The Manual"),
        # not acronyms: initials that do not spell the term, one capital, a single word, too long
        ("Ada", "A Pascal descendant language designed in 1979.", None),
        ("TCP", "A reliable transport of the Internet.", None),
        ("AB", "Alpha.", None),
        ("ABCDEFGHIJK", "A B C D E F G H I J K.", None),
    ],
)
def test_expansion_of(term: str, definition: str, expected: str | None) -> None:
    assert expansion_of(term, definition) == expected


def test_dataset_from_a_dictd_file(tmp_path: Path) -> None:
    entries = [
        ("TCP", "TCP\n\n   <networking> {Transmission Control Protocol}: the reliable\n   transport.\n\n"),
        ("Ada", "Ada\n\n   <language> A {Pascal}-descendant language.\n\n"),
        ("ISP", "ISP\n\n   Internet Service Provider.\n\n"),
    ]
    body, index = b"", []
    for headword, entry in entries:
        raw = entry.encode("utf-8")
        index.append(f"{headword}\t{_b64(len(body))}\t{_b64(len(raw))}")
        body += raw
    index.append(f"ISP again\t{_b64(len(body) - len(raw))}\t{_b64(len(raw))}")  # an alias: read once
    (tmp_path / "foldoc.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "foldoc.dict.dz", "wb") as handle:
        handle.write(body)
    ds = load_source(DataConfig(source="foldoc_acronyms", path=str(tmp_path), partitioner="iid"), "causal_lm")
    assert ds["prompt"] == ['What does "TCP" stand for?', 'What does "ISP" stand for?']
    assert ds["response"] == ["Transmission Control Protocol", "Internet Service Provider"]
    assert ds["subject"][0] == "networking"
