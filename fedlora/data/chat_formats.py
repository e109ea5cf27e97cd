"""Causal-LM row formats (``data.format``): detect them, check every row, and write canonical rows.

Why one canonical form per shape: tokenization, partitioning and the data checks should not care
whether a user's file was Alpaca, ShareGPT or plain text. Every causal-LM dataset leaves here in
exactly one of three shapes (plus the ``data.partition_field`` column when present):

- ``pair``: ``prompt``, ``response`` (strings) - one user turn and its answer. ``prompt_response``
  and ``alpaca`` rows, and every built-in corpus, when there is no ``data.system_prompt``;
- ``chat``: ``messages`` - a list of ``{role, content}`` turns (roles ``system``/``user``/
  ``assistant``, a system turn only first, ending with an assistant turn). Chat rows, and pair rows
  given a ``data.system_prompt``;
- ``text``: ``text`` - plain text, every token learned.

A malformed row is an error that names its place in the file (``file.jsonl:17`` for JSON Lines,
``file.csv row 17`` otherwise) and the offending field, never a row silently skipped or a crash in
a Ray worker rounds later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import datasets

from fedlora.config.schema import DataConfig
from fedlora.data.chat_rows import CHAT_COLUMNS, RowError, alpaca_pair, chat_turns, kind

logger = logging.getLogger(__name__)

CHAT_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
#: Canonical causal-LM columns per shape.
SHAPES: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "response"),
    "chat": ("messages",),
    "text": ("text",),
}
_SHOWN = 5


def causal_shape(columns: Sequence[str]) -> str | None:
    """``"chat"``, ``"pair"`` or ``"text"`` for canonical causal-LM columns; ``None`` if none fits."""
    if "messages" in columns:
        return "chat"
    if "prompt" in columns and "response" in columns:
        return "pair"
    return "text" if "text" in columns else None


def causal_columns(columns: Sequence[str]) -> list[str]:
    """The canonical columns of the shape of ``columns`` (``ValueError`` if there is none)."""
    shape = causal_shape(columns)
    if shape is None:
        raise ValueError(
            f"causal LM data: expected canonical columns {[list(c) for c in SHAPES.values()]}, "
            f"got {list(columns)}"
        )
    return list(SHAPES[shape])


def _matches(columns: Sequence[str], cfg: DataConfig) -> list[tuple[str, str]]:
    """Every format the columns fit, in detection order, each with the columns that made it fit."""
    found = []
    if cfg.prompt_field in columns and cfg.response_field in columns:
        found.append(("prompt_response", f"columns '{cfg.prompt_field}' + '{cfg.response_field}'"))
    if chat := [c for c in CHAT_COLUMNS if c in columns]:
        found.append(("chat", f"column '{chat[0]}'"))
    if "instruction" in columns and "output" in columns:
        found.append(("alpaca", "columns 'instruction' + 'output'"))
    if cfg.text_field in columns:
        found.append(("text", f"column '{cfg.text_field}' (data.text_field)"))
    return found


def required_columns(fmt: str, cfg: DataConfig) -> str:
    """What ``fmt`` needs, in words, for error messages."""
    return {
        "prompt_response": f"columns '{cfg.prompt_field}' (data.prompt_field) and '{cfg.response_field}' "
        "(data.response_field)",
        "alpaca": "columns 'instruction' and 'output' ('input' optional)",
        "chat": "a 'messages' column (list of {role, content}) or a ShareGPT 'conversations' column "
        "(list of {from, value})",
        "text": f"column '{cfg.text_field}' (data.text_field)",
    }[fmt]


def detection_hint(cfg: DataConfig) -> str:
    """Appended to a missing-column error when ``data.format=auto`` found no format at all."""
    others = ", ".join(f"{fmt}: {required_columns(fmt, cfg)}" for fmt in ("chat", "alpaca", "text"))
    return f"; data.format=auto found no other causal LM format either ({others})"


def resolve_format(columns: Sequence[str], cfg: DataConfig, origin: str) -> tuple[str, bool]:
    """The causal-LM format of a raw dataset: ``data.format`` or, for ``auto``, detected from its columns.

    Returns
    -------
    tuple[str, bool]
        The format, and whether it is ``prompt_response`` only because nothing was detected (its
        column check then fails and should get :func:`detection_hint`).

    Raises
    ------
    ValueError
        A forced ``data.format`` whose columns are missing.
    """
    found = _matches(columns, cfg)
    if cfg.format != "auto":
        if cfg.format not in [fmt for fmt, _ in found]:
            raise ValueError(
                f"data.format: '{cfg.format}' needs {required_columns(cfg.format, cfg)}; {origin} has "
                f"columns {list(columns)}"
            )
        return cfg.format, False
    if not found:
        return "prompt_response", True
    fmt, why = found[0]
    others = ", ".join(f for f, _ in found[1:])
    also = f" (also fits: {others}; set data.format to pick one)" if others else ""
    logger.info("data.format=auto: %s is '%s' (from %s)%s", origin, fmt, why, also)
    return fmt, False


def _raise_problems(problems: list[tuple[int, str]], locate: Callable[[int], str]) -> None:
    if not problems:
        return
    row, message = problems[0]
    more = ""
    if len(problems) > 1:
        shown = ", ".join(locate(r) for r, _ in problems[1 : 1 + _SHOWN])
        dots = ", ..." if len(problems) > 1 + _SHOWN else ""
        rows = "row" if len(problems) == 2 else "rows"
        more = f" ({len(problems) - 1} more malformed {rows}: {shown}{dots})"
    raise ValueError(f"data.path: {locate(row)}: {message}{more}")


def _group(ds: datasets.Dataset, cfg: DataConfig, used: set[str]) -> str | None:
    """``data.partition_field`` when it is an extra column of ``ds`` (kept under its own name)."""
    group = cfg.partition_field
    canonical = {c for columns in SHAPES.values() for c in columns}
    keep = bool(group) and group in ds.column_names and group not in used and group not in canonical
    return group if keep else None


def _build(
    columns: dict[str, list], features: dict, ds: datasets.Dataset, rows: list[int], group: str | None
) -> datasets.Dataset:
    """A fresh in-memory dataset of ``columns`` plus the kept ``group`` column of ``ds`` at ``rows``."""
    if group is not None:
        values = ds[group][:]
        columns[group] = [values[i] for i in rows]
        features[group] = ds.features[group]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def canonical_rows(
    ds: datasets.Dataset, fmt: str, cfg: DataConfig, origin: str, locate: Callable[[int], str]
) -> datasets.Dataset:
    """Canonical rows for ``alpaca`` (pair), ``chat`` (chat) or ``text`` (text) raw data.

    Every row is checked; the first malformed one raises ``ValueError`` as
    ``data.path: <locate(row)>: <field>: <what is wrong>`` with a count of the others. Text rows that
    are empty are dropped with a warning (as blank prompt/response rows are).
    """
    string = datasets.Value("string")
    problems: list[tuple[int, str]] = []
    if fmt == "chat":
        present = [c for c in CHAT_COLUMNS if c in ds.column_names]
        values = {c: ds[c][:] for c in present}
        messages, trimmed = [], 0
        for i in range(len(ds)):
            column = next((c for c in present if values[c][i] is not None), present[0])
            try:
                turns, cut = chat_turns(values[column][i], column)
            except RowError as err:
                problems.append((i, str(err)))
                continue
            messages.append(turns)
            trimmed += bool(cut)
        _raise_problems(problems, locate)
        if trimmed:
            logger.warning("%s: %d conversations end with non-assistant turns; those turns were cut (no loss "
                           "on them)", origin, trimmed)  # fmt: skip
        return _build({"messages": messages}, {"messages": CHAT_FEATURE}, ds, list(range(len(ds))),
                      _group(ds, cfg, set(present)))  # fmt: skip
    if fmt == "alpaca":
        rows = ds.select_columns([c for c in ("instruction", "input", "output") if c in ds.column_names])
        pairs = []
        for i, row in enumerate(rows.to_list()):
            try:
                pairs.append(alpaca_pair(row))
            except RowError as err:
                problems.append((i, str(err)))
        _raise_problems(problems, locate)
        columns = {"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]}
        return _build(columns, {"prompt": string, "response": string}, ds, list(range(len(ds))),
                      _group(ds, cfg, {"instruction", "input", "output"}))  # fmt: skip
    if fmt != "text":
        raise ValueError(f"data.format: expected one of alpaca/chat/text here, got {fmt!r}")
    texts, keep = ds[cfg.text_field][:], []
    for i, value in enumerate(texts):
        if value is not None and not isinstance(value, str):
            problems.append((i, f"{cfg.text_field}: expected a string, got {kind(value)}"))
        elif value is not None and value.strip():
            keep.append(i)
    _raise_problems(problems, locate)
    if not keep:
        raise ValueError(
            f"data.text_field: column '{cfg.text_field}' is empty in all {len(ds)} rows of {origin}"
        )
    if len(keep) < len(ds):
        blank = sorted(set(range(len(ds))) - set(keep))
        logger.warning(
            "%s: dropped %d of %d rows with an empty or missing '%s' (data.text_field): %s", origin,
            len(blank), len(ds), cfg.text_field, ", ".join(locate(i) for i in blank[:_SHOWN]),
        )  # fmt: skip
    return _build({"text": [texts[i] for i in keep]}, {"text": string}, ds, keep,
                  _group(ds, cfg, {cfg.text_field}))  # fmt: skip


def with_system_prompt(ds: datasets.Dataset, system_prompt: str, origin: str) -> datasets.Dataset:
    """Apply ``data.system_prompt``: pair rows become chat rows ``[system, user, assistant]``, chat rows
    without a system turn get one; ``""`` changes nothing.

    Raises
    ------
    ValueError
        For text rows (plain text has no turns to put a system message before).
    """
    if not system_prompt:
        return ds
    shape = causal_shape(ds.column_names)
    system = {"role": "system", "content": system_prompt}
    if shape == "text":
        raise ValueError(
            f"data.system_prompt: does not apply to plain-text rows ({origin} is data.format=text, which has "
            "no turns); remove data.system_prompt or use a prompt_response, alpaca or chat file"
        )
    if shape == "pair":
        messages = [
            [system, {"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(ds["prompt"][:], ds["response"][:], strict=True)
        ]
    else:
        messages = [m if m and m[0]["role"] == "system" else [system, *m] for m in ds["messages"][:]]
    others = [c for c in ds.column_names if c not in ("prompt", "response", "messages")]
    out = ds.select_columns(others) if others else None
    features = datasets.Features({"messages": CHAT_FEATURE})
    chat = datasets.Dataset.from_dict({"messages": messages}, features=features)
    if out is None:
        return chat
    return datasets.concatenate_datasets([chat, out.flatten_indices(keep_in_memory=True)], axis=1)
