"""Dialogue pairs from the ``chitchat_dataset`` package (Chit Chat Challenge conversations).

Why: it ships its data inside the wheel (no download) and every message carries its sender, so each
responding person is a natural client for a federated conversational fine-tune. Consecutive turns
of one conversation become ``prompt`` (turn i) -> ``response`` (turn i+1), with ``person`` = the
sender of turn i+1. We only locate the package with ``find_spec``; its data is one JSON file.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import datasets

from fedlora.config.schema import DataConfig

logger = logging.getLogger(__name__)


def chitchat_json_path(path: str = "") -> Path:
    """``data.path`` if set, else ``dataset.json`` of the installed ``chitchat_dataset`` package.

    Raises
    ------
    FileNotFoundError
        If the file (or the package) is missing.
    """
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"data.path: file '{path}' not found (expected a chitchat dataset.json)")
        return file
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "data.source='chitchat': the 'chitchat_dataset' package is not installed "
            "(pip install chitchat-dataset), and data.path is empty"
        )
    file = Path(next(iter(spec.submodule_search_locations))) / "dataset.json"
    if not file.is_file():
        raise FileNotFoundError(f"data.source='chitchat': file '{file}' not found in the package")
    return file


def conversation_pairs(conversations: dict[str, Any]) -> dict[str, list[str]]:
    """Turn ``{conv_id: {"messages": [[{text, sender, ...}, ...], ...]}}`` into pair columns.

    A turn is one sender's consecutive messages joined with spaces; empty turns are skipped.

    Returns
    -------
    dict[str, list[str]]
        Columns ``prompt``, ``response`` and ``person`` (the responder's sender id).
    """
    columns: dict[str, list[str]] = {"prompt": [], "response": [], "person": []}
    for conv_id, conv in conversations.items():
        if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
            raise ValueError(f"chitchat: conversation {conv_id!r} has no 'messages' list")
        turns = [
            (str(turn[0]["sender"]), " ".join(str(m["text"]) for m in turn))
            for turn in conv["messages"]
            if turn
        ]
        for (_, prompt), (responder, response) in itertools.pairwise(turns):
            columns["prompt"].append(prompt)
            columns["response"].append(response)
            columns["person"].append(responder)
    return columns


def load_chitchat(cfg: DataConfig) -> datasets.Dataset:
    """Load chitchat as a causal-LM dataset with columns ``prompt``, ``response``, ``person``."""
    file = chitchat_json_path(cfg.path)
    with file.open(encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"data.path: file '{file}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"data.path: file '{file}' must hold a JSON object {{conv_id: conversation}}")
    columns = conversation_pairs(data)
    logger.info(
        "chitchat: %d pairs from %d conversations, %d distinct responders (%s)",
        len(columns["prompt"]),
        len(data),
        len(set(columns["person"])),
        file,
    )
    return datasets.Dataset.from_dict(columns)
