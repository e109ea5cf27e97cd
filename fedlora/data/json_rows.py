"""Read a JSON / JSON Lines file with ``json`` when ``datasets`` cannot, so a bad row gets a line number.

Why: ``datasets``' JSON builder (pyarrow, then a ujson fallback) gives up on files whose rows mix
value types in one column - ``"messages": "hello"`` on one line and a list on the others - and on
some such files also when whitespace-only lines are present. Its error names neither line nor
column. Every line is valid JSON in that case, so the file is read here instead, each column typed
as ``datasets`` would type it or, when its values do not share one type, as ``datasets.Json``; the
row checks that follow (:mod:`fedlora.data.chat_formats`) then name the offending line and field.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip()[:1] == "[":
        return list(json.loads(text))
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _feature(values: list) -> datasets.features.FeatureType:
    """The type ``datasets`` infers for ``values``, or ``Json`` when they mix types."""
    try:
        return datasets.Dataset.from_dict({"v": values}).features["v"]
    except Exception:  # pyarrow refuses mixed list/str/number values with several error types
        return datasets.Json()


def read_json_rows(path: Path, reason: str) -> datasets.Dataset:
    """All rows of a JSON array or JSON Lines file (blank lines skipped, as ``datasets`` does).

    Parameters
    ----------
    path : Path
        A file whose every line (JSON Lines) or whole text (array) is valid JSON objects.
    reason : str
        Why ``datasets`` could not read it; logged, since this is a fallback.
    """
    rows = _rows(path)
    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key, values in columns.items():
        values.extend(row.get(key) for row in rows)
    features = {key: _feature(values) for key, values in columns.items()}
    mixed = [key for key, feature in features.items() if isinstance(feature, datasets.Json)]
    logger.info(
        "%s: datasets could not read it (%s); read with json instead (columns with mixed value types: %s)",
        path, reason, mixed or "none",
    )  # fmt: skip
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))
