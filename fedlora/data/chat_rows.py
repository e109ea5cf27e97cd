"""One causal-LM row at a time: check a chat / Alpaca row and say where a bad one is in its file.

Why separate from :mod:`fedlora.data.chat_formats`: these are the rules a single row must obey and
the words its error uses (``messages[2].role: expected one of system/user/assistant, got 'bot'``),
kept apart from dataset-level detection so each can be read, and tested, on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedlora.config.schema import DataConfig

#: Raw role names accepted per chat column, mapped to the canonical role.
ROLES: dict[str, dict[str, str]] = {
    "messages": {"system": "system", "user": "user", "assistant": "assistant"},
    "conversations": {"system": "system", "human": "user", "gpt": "assistant", "user": "user",
                      "assistant": "assistant"},
}  # fmt: skip
CHAT_COLUMNS = tuple(ROLES)
#: Between an Alpaca instruction and its non-empty input, in the user turn.
ALPACA_JOIN = "\n\n"


class RowError(ValueError):
    """One malformed row; the message names the field inside the row (e.g. ``messages[2].role``)."""


def kind(value: Any) -> str:
    """What a JSON value is, in words (error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _keys(item: dict, column: str) -> tuple[str, str]:
    """``(role key, content key)`` of one turn: ShareGPT's ``from``/``value`` or ``role``/``content``."""
    if column == "conversations" and (item.get("from") is not None or item.get("role") is None):
        return "from", "value"
    return "role", "content"


def chat_turns(value: Any, column: str) -> tuple[list[dict[str, str]], int]:
    """Check one conversation and return its canonical turns, cut after the last assistant turn.

    Contents are stripped of surrounding whitespace (several chat templates trim them, and the loss
    mask relies on the template writing each turn exactly). Returns the turns and how many trailing
    non-assistant turns were cut (they carry no loss).

    Raises
    ------
    RowError
        Naming the field: not a list, a turn that is not an object, an unknown role, a non-string
        content, a system turn that is not first, an empty assistant turn, no assistant turn.
    """
    roles = ROLES[column]
    if not isinstance(value, list):
        raise RowError(f"{column}: expected a list of turns ({{role, content}} objects), got {kind(value)}")
    turns: list[dict[str, str]] = []
    for i, item in enumerate(value):
        where = f"{column}[{i}]"
        if not isinstance(item, dict):
            raise RowError(f"{where}: expected an object with a role and a content, got {kind(item)}")
        role_key, content_key = _keys(item, column)
        role, content = item.get(role_key), item.get(content_key)
        if role is None:
            raise RowError(f"{where}.{role_key}: missing; expected one of {'/'.join(roles)}")
        if not isinstance(role, str) or role not in roles:
            raise RowError(f"{where}.{role_key}: expected one of {'/'.join(roles)}, got {role!r}")
        if not isinstance(content, str):
            raise RowError(f"{where}.{content_key}: expected a string, got {kind(content)}")
        if roles[role] == "system" and i > 0:
            raise RowError(f"{where}.{role_key}: a system turn is only allowed as the first turn")
        if roles[role] == "assistant" and not content.strip():
            raise RowError(f"{where}.{content_key}: empty assistant turn")
        turns.append({"role": roles[role], "content": content.strip()})
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    if last < 0:
        seen = [t["role"] for t in turns]
        raise RowError(f"{column}: the conversation has no assistant turn (roles {seen}); nothing to learn")
    return turns[: last + 1], len(turns) - last - 1


def _string(row: dict, column: str, *, required: bool) -> str:
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(f"{column}: missing (expected a non-empty string)")
        return ""
    if not isinstance(value, str):
        raise RowError(f"{column}: expected a string, got {kind(value)}")
    if required and not value.strip():
        raise RowError(f"{column}: empty")
    return value


def alpaca_pair(row: dict) -> tuple[str, str]:
    """``(prompt, response)`` of an Alpaca row: the input joins the instruction after a blank line."""
    instruction = _string(row, "instruction", required=True)
    extra = _string(row, "input", required=False)
    output = _string(row, "output", required=True)
    prompt = f"{instruction}{ALPACA_JOIN}{extra}" if extra.strip() else instruction
    return prompt, output


def row_locator(cfg: DataConfig, origin: str) -> Callable[[int], str]:
    """Where 0-based data row ``i`` is, for error messages: ``<path>:<line>`` for JSON Lines.

    ``datasets`` reads a JSON Lines file's non-blank lines in order, so the line is exact. CSV (a quoted
    field may span lines), Parquet, JSON arrays and saved/hub datasets get ``<origin> row N``, N counting
    data rows from 1. The file is only re-read when an error needs a line number.
    """
    path, lines = Path(cfg.path).expanduser(), []

    def locate(i: int) -> str:
        if not lines:
            text = path.read_text(encoding="utf-8", errors="replace")
            array = path.suffix.lower() == ".json" and text.lstrip()[:1] == "["
            lines.extend([] if array else [n for n, line in enumerate(text.split("\n"), 1) if line.strip()])
            lines.append(-1)  # marks "read"; a JSON array keeps only this
        return f"{cfg.path}:{lines[i]}" if i < len(lines) - 1 else f"{origin} row {i + 1}"

    jsonl = cfg.source == "files" and path.is_file() and path.suffix.lower() in (".jsonl", ".json")
    return locate if jsonl else lambda i: f"{origin} row {i + 1}"
