"""A deployed node's own data file (node config ``data-path``): its private training data, used whole.

Why not :func:`fedlora.data.build_splits`: that pipeline is for the *shared* corpus every process can
read. It removes a central test set (the server already has its own) and partitions the rest across
clients, so a node's private 1000-row file gave node 0 of 2 only 348 training rows. Here the file is
read with the same reader and column handling as ``data.source=files`` (:mod:`fedlora.data.files`),
with no ``data.max_examples``, no central test split and no partitioning; only an optional local
held-out split, drawn exactly as for a partition of the shared corpus.

Why labels come from the server: a node's file often holds only some of the classes, and ids built
from the file's own unique values would silently mean different classes on different nodes. Each
row's class name (built as for the shared corpus, so ``2``, ``"2"`` and ``"02"`` all name ``'2'``)
is mapped to its index in the server's list; an unknown label is an error naming file and row.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig
from fedlora.data.central import column_values
from fedlora.data.chat_formats import causal_columns
from fedlora.data.files import canonicalize, load_files
from fedlora.data.partition import ClientData, FederatedSplits
from fedlora.data.sources import check_task

logger = logging.getLogger(__name__)

_ROW = "__fedlora_row__"  # 0-based data row of the file, carried through canonicalize for error messages
_CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, ClientData] = OrderedDict()
_LOCK = threading.RLock()
_SHOWN = 5


def _columns(cfg: DataConfig, task: str) -> list[str]:
    """The file columns ``task`` reads, by their configured names."""
    if task == "classification":
        return [cfg.text_field, cfg.label_field]
    return [cfg.prompt_field, cfg.response_field]


def _read(cfg: DataConfig, task: str, path: str) -> datasets.Dataset:
    """The file's canonical rows (as ``data.source=files`` reads them) plus a :data:`_ROW` column.

    The row column travels as ``partition_field``, the one extra column :func:`canonicalize` keeps, so
    that an unknown label can be reported by its row in the file even after blank rows were dropped.
    """
    expected = _columns(cfg, task)
    local = dataclasses.replace(cfg, source="files", path=path, partition_field=_ROW)
    try:
        raw = load_files(local)
        if _ROW in raw.column_names:
            raw = raw.remove_columns(_ROW)
        raw = raw.add_column(_ROW, list(range(len(raw))))
        return canonicalize(raw, local, task, f"node data file '{path}'")
    except (ValueError, FileNotFoundError) as err:
        # files.py names the file and what is wrong; a node's operator also needs the columns to provide.
        raise type(err)(f"{err} (node config data-path; expected columns {expected})") from err


def _label_ids(ds: datasets.Dataset, labels: Sequence[str], path: str) -> list[int]:
    """Each row's label id in the server's list; ``ValueError`` naming the first unknown label's row."""
    names = ds.features["label"].names
    index = {str(name): i for i, name in enumerate(labels)}
    ids = column_values(ds, "label")
    unknown = [k for k, v in enumerate(ids) if names[v] not in index]
    if unknown:
        rows = column_values(ds.select(unknown[:_SHOWN]), _ROW)
        first = names[ids[unknown[0]]]
        found = sorted({names[ids[k]] for k in unknown})
        raise ValueError(
            f"data.label_field: node data file '{path}' data row {rows[0] + 1} (counting from 1, after any "
            f"header) has label {first!r}, which is not one of the server's labels {list(labels)}; "
            f"{len(unknown)} row(s) have unknown labels {found[:_SHOWN]} (data rows "
            f"{', '.join(str(r + 1) for r in rows)}{', ...' if len(unknown) > _SHOWN else ''})"
        )
    return [index[names[v]] for v in ids]


def _canonical(cfg: DataConfig, task: str, path: str, labels: Sequence[str] | None) -> datasets.Dataset:
    """The whole file as canonical columns; classification ids follow the server's ``labels``."""
    ds = _read(cfg, task, path)
    if task != "classification":
        return ds.select_columns(causal_columns(ds.column_names))  # prompt/response, messages or text
    assert labels is not None  # checked by load_node_data before reading
    ids = _label_ids(ds, labels, path)
    feature = datasets.ClassLabel(names=[str(name) for name in labels])
    ds = ds.select_columns(["text"]).add_column("label", ids, feature=feature)
    return ds.flatten_indices(keep_in_memory=True)


def load_node_data(
    cfg: DataConfig,
    task: str,
    path: str,
    *,
    heldout_fraction: float = 0.0,
    labels: Sequence[str] | None = None,
) -> ClientData:
    """Load a node's own data file whole: every row trains, except an optional local held-out split.

    Cached per process on the file's path, modification time and size plus the arguments, so a
    long-lived SuperNode serving many rounds reads the file once, and rereads it when it changes.

    Parameters
    ----------
    cfg : DataConfig
        Field names (``text_field``/``label_field`` or ``prompt_field``/``response_field``),
        ``split`` (for a ``save_to_disk`` directory) and ``seed``. ``data.max_examples``, the
        central test size and the partitioner do not apply to a node's own file.
    task : str
        ``"classification"`` or ``"causal_lm"``.
    path : str
        The node's file (any format :func:`fedlora.data.files.load_files` reads).
    heldout_fraction : float
        Fraction of the rows kept for local evaluation, split with ``Dataset.train_test_split``
        seeded by ``data.seed`` exactly as :meth:`FederatedSplits.client` splits a partition (at least
        one row when > 0, always leaving one training row). ``0`` gives an empty ``heldout``.
    labels : Sequence[str], optional
        The server's class names (index = label id); required for classification.

    Returns
    -------
    ClientData
        Classification: ``text``, ``label`` (``ClassLabel`` with the server's names). Causal LM:
        ``prompt``, ``response``.

    Raises
    ------
    ValueError
        Classification without ``labels``; a label not in ``labels`` (names the file, data row and
        label); an empty file, missing columns or an unreadable file (names the file and the
        expected columns); ``heldout_fraction`` outside ``[0, 1)``.
    FileNotFoundError
        If ``path`` does not exist.
    """
    check_task(task)
    if task == "classification" and labels is None:
        raise ValueError(
            f"labels: the server's label list is required to load node data file '{path}' for "
            "classification (ids must follow the server's classes, not the file's own values)"
        )
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction: expected a value in [0, 1), got {heldout_fraction}")
    file = Path(path).expanduser()
    if not path or not file.exists():
        raise FileNotFoundError(
            f"data.path: node data file '{path}' not found (node config data-path; expected columns "
            f"{_columns(cfg, task)})"
        )
    stat = file.stat()
    names = tuple(str(name) for name in labels) if labels is not None and task == "classification" else None
    key = (
        str(file.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        repr(cfg),
        task,
        float(heldout_fraction),
        names,
    )
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        ds = _canonical(cfg, task, path, names)
        empty = ds.select([])
        whole = FederatedSplits(central_test=empty, partitions=(ds,), labels=names, group_names=None)
        data = whole.client(0, heldout_fraction, cfg.seed)  # partition 0: the seed is data.seed itself
        logger.info(
            "node data file %s (%s): %d rows, %d train, %d held out",
            path, task, len(ds), len(data.train), len(data.heldout),
        )  # fmt: skip
        _CACHE[key] = data
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return data


def clear_cache() -> None:
    """Forget memoised node data (tests; the cache key already notices changed files)."""
    with _LOCK:
        _CACHE.clear()
