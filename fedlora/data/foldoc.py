"""Question/answer pairs from FOLDOC (Free On-line Dictionary of Computing), read from dictd files.

Why dictd: Debian's ``dict-foldoc`` package is the one offline, redistributable copy of FOLDOC; it is
a pair of files (``foldoc.index`` + ``foldoc.dict.dz``) that we parse directly rather than depending
on a dict server. The package may not be installed, so three places are searched (``data.path``,
``/usr/share/dictd``, and ``<repo>/.cache/deb/root/usr/share/dictd`` where ``make data-foldoc``
unpacks the .deb without root), and a clear error explains how to get it.

Each entry becomes ``prompt = 'What is "<term>" in computing?'`` / ``response = <first paragraph>``.
The ``<subject>`` tag that starts many definitions (``<language>``, ``<networking>`` ...) becomes the
``subject`` column, a natural non-IID split. Entries without a tag get ``subject = "none"``; when
partitioning ``by_field`` on ``subject`` those entries are excluded, because "no tag" is not a topic
and would otherwise form the largest (and least coherent) client.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig

logger = logging.getLogger(__name__)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
INDEX_NAME = "foldoc.index"
DICT_NAMES = ("foldoc.dict.dz", "foldoc.dict")
NO_SUBJECT = "none"
MIN_RESPONSE_CHARS = 20
REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = (
    "install it with `sudo apt-get install dict-foldoc`, or run `make data-foldoc` (unpacks the .deb "
    "into .cache/deb/root without installing it), or set data.path to a directory holding "
    "foldoc.index and foldoc.dict.dz"
)

_SENSE = re.compile(r"^\d{1,2}\.\s+")
_TAG = re.compile(r"^<([^<>]+)>\s*")
_XREF = re.compile(r"\{([^{}]*)\}")
_SPACE = re.compile(r"\s+")


def decode_b64_number(text: str) -> int:
    """Decode a dictd base-64 number (big-endian digits of :data:`B64_ALPHABET`).

    Raises
    ------
    ValueError
        If ``text`` is empty or has a character outside the alphabet.
    """
    if not text:
        raise ValueError("empty dictd base64 number")
    value = 0
    for char in text:
        digit = B64_ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"invalid dictd base64 digit {char!r} in {text!r}")
        value = value * 64 + digit
    return value


def candidate_dirs(path: str) -> list[Path]:
    """Directories searched for the dictd files: only ``path`` if given, else the standard places."""
    if path:
        return [Path(path).expanduser()]
    dirs = [
        Path("/usr/share/dictd"),
        REPO_ROOT / ".cache/deb/root/usr/share/dictd",
        Path.cwd().resolve() / ".cache/deb/root/usr/share/dictd",
    ]
    return list(dict.fromkeys(dirs))


def find_foldoc_files(path: str = "") -> tuple[Path, Path]:
    """Find ``foldoc.index`` and the (compressed) dictionary file.

    Parameters
    ----------
    path : str
        ``data.path``: a directory holding the two files; empty to search the standard places.

    Returns
    -------
    tuple[Path, Path]
        The index file and the dictionary file.

    Raises
    ------
    FileNotFoundError
        Naming every directory searched and how to install ``dict-foldoc``.
    """
    searched = []
    for directory in candidate_dirs(path):
        searched.append(str(directory))
        index = directory / INDEX_NAME
        if not index.is_file():
            continue
        for name in DICT_NAMES:
            if (directory / name).is_file():
                return index, directory / name
    where = f"data.path: '{path}'" if path else f"searched {searched}"
    raise FileNotFoundError(
        f"data.source='foldoc': FOLDOC files {INDEX_NAME} + {DICT_NAMES[0]} not found ({where}); "
        + INSTALL_HINT
    )


def read_index(index_path: Path) -> list[tuple[str, int, int]]:
    """Parse a dictd index into ``(headword, offset, length)``, skipping ``00``-database entries.

    Raises
    ------
    ValueError
        On a malformed line, naming the file and line number.
    """
    entries = []
    with index_path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(
                    f"{index_path}:{number}: expected 'headword<TAB>offset<TAB>length', got {line!r}"
                )
            if parts[0].startswith("00"):
                continue
            try:
                entries.append((parts[0], decode_b64_number(parts[1]), decode_b64_number(parts[2])))
            except ValueError as err:
                raise ValueError(f"{index_path}:{number}: {err}") from err
    return entries


def read_dict_bytes(dict_path: Path) -> bytes:
    """Uncompressed dictionary bytes (dictzip ``.dz`` files are gzip-readable)."""
    if dict_path.suffix == ".dz":
        with gzip.open(dict_path, "rb") as handle:
            return handle.read()
    return dict_path.read_bytes()


def clean_text(text: str) -> str:
    """Strip cross-reference braces (keeping their text) and collapse whitespace."""
    return _SPACE.sub(" ", _XREF.sub(r"\1", text)).strip()


def parse_entry(body: str) -> tuple[str, str, str] | None:
    """Split one dictionary entry into ``(term, subject, definition)``.

    Line 1 is the term; the first paragraph after it is the definition. A leading sense number
    (``1.``) and a leading ``<subject>`` tag are removed from the definition; with several
    comma-separated subjects the first one is kept. Braces are stripped, whitespace collapsed.

    Returns
    -------
    tuple[str, str, str] | None
        ``None`` if the entry has no term or no definition text.
    """
    lines = body.replace("\r\n", "\n").split("\n")
    term = lines[0].strip()
    paragraph: list[str] = []
    for line in lines[1:]:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            break
    if not term or not paragraph:
        return None
    text = _SPACE.sub(" ", " ".join(paragraph)).strip()
    text = _SENSE.sub("", text, count=1)
    subject = NO_SUBJECT
    match = _TAG.match(text)
    if match:
        subject = match.group(1).split(",")[0].strip().lower() or NO_SUBJECT
        text = text[match.end() :]
    return term, subject, clean_text(text)


def foldoc_entries(index_path: Path, dict_path: Path) -> Iterator[tuple[str, str, str]]:
    """Every parsed ``(term, subject, definition)`` of a dictd index + dictionary, in index order.

    Entries sharing the same (offset, length) (aliases) are read once; entries without a term or
    definition are skipped.

    Raises
    ------
    ValueError
        An index entry points past the end of the dictionary (a truncated or mismatched file).
    """
    raw = read_dict_bytes(dict_path)
    seen: set[tuple[int, int]] = set()
    for headword, offset, length in read_index(index_path):
        if (offset, length) in seen:
            continue
        seen.add((offset, length))
        if offset + length > len(raw):
            raise ValueError(
                f"{index_path}: entry {headword!r} points past the end of '{dict_path}' "
                f"(offset {offset} + length {length} > {len(raw)} bytes)"
            )
        parsed = parse_entry(raw[offset : offset + length].decode("utf-8", errors="replace"))
        if parsed is not None:
            yield parsed


def foldoc_pairs(index_path: Path, dict_path: Path) -> dict[str, list[str]]:
    """Build the prompt/response/subject columns from a dictd index + dictionary.

    Kept: responses of at least :data:`MIN_RESPONSE_CHARS` characters that do not start with ``[``
    (citation-only entries).
    """
    columns: dict[str, list[str]] = {"prompt": [], "response": [], "subject": []}
    for term, subject, definition in foldoc_entries(index_path, dict_path):
        if len(definition) < MIN_RESPONSE_CHARS or definition.startswith("["):
            continue
        columns["prompt"].append(f'What is "{term}" in computing?')
        columns["response"].append(definition)
        columns["subject"].append(subject)
    return columns


def load_foldoc(cfg: DataConfig) -> datasets.Dataset:
    """Load FOLDOC as a causal-LM dataset with columns ``prompt``, ``response``, ``subject``.

    With ``data.partitioner='by_field'`` and ``data.partition_field='subject'``, entries whose subject
    is ``"none"`` are dropped (see the module docstring).
    """
    index_path, dict_path = find_foldoc_files(cfg.path)
    columns = foldoc_pairs(index_path, dict_path)
    counts = Counter(columns["subject"])
    logger.info(
        "foldoc: %d pairs from %s (%d with a subject tag, %d distinct subjects)",
        len(columns["prompt"]),
        dict_path,
        len(columns["prompt"]) - counts.get(NO_SUBJECT, 0),
        len(counts) - (NO_SUBJECT in counts),
    )
    ds = datasets.Dataset.from_dict(columns)
    if cfg.partitioner == "by_field" and cfg.partition_field == "subject":
        ds = ds.filter(lambda s: [x != NO_SUBJECT for x in s], input_columns="subject", batched=True)
        logger.info("foldoc: kept %d pairs with a subject tag for partitioning by subject", len(ds))
    return ds
