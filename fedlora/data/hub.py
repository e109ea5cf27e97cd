"""``data.source=hf``: a hub dataset id or a local dataset directory, with clear failures offline.

Why its own module: runs force Hugging Face offline mode (``simulations/__init__.py``), so a hub id
only loads from the local cache, while a local directory must load whatever the network state. The
path is therefore classified first - a ``save_to_disk`` directory, a single data file, a directory
of data files (``train.jsonl``, ``data/train-*.parquet``, ... as ``datasets`` lays them out), or a
hub id - and each failure says which it was taken for and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig
from fedlora.data.files import _SAVED_MARKERS, FILE_BUILDERS, _one_line, _read_file, _root_cause, load_saved

_OFFLINE_SIGNS = ("OfflineModeIsEnabled", "offline mode", "Couldn't reach")


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``name`` or ``owner/name``)."""
    return path.startswith(("/", "./", "../", "~", ".\\")) or os.sep + os.sep in path or path.count("/") > 1


def _offline_mode() -> str:
    values = [os.environ.get(k, "") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")]
    return next((v for v in values if v), "unset")


def _local_dir(path: Path, cfg: DataConfig) -> datasets.Dataset:
    """A directory of data files, read by ``datasets``' packaged builders (no network involved)."""
    try:
        return datasets.load_dataset(str(path), split=cfg.split, keep_in_memory=True)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(f"data.split: cannot load split '{cfg.split}' of directory '{cfg.path}': "
                             f"{_one_line(err, 300)}") from err  # fmt: skip
        raise ValueError(f"data.path: directory '{cfg.path}' is not readable as a dataset "
                         f"({_root_cause(err)})") from err  # fmt: skip
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"data.path: directory '{cfg.path}' holds no data files datasets can read ({_one_line(err)}); "
            f"expected {sorted(FILE_BUILDERS)} files (e.g. train.jsonl) or a save_to_disk directory"
        ) from err
    except Exception as err:  # the json/csv/parquet builders raise many types for bad files
        raise ValueError(f"data.path: directory '{cfg.path}' is not readable as a dataset "
                         f"({_root_cause(err)})") from err  # fmt: skip


def load_hub(cfg: DataConfig) -> datasets.Dataset:
    """Load ``data.path`` for ``data.source=hf``, split ``data.split``.

    ``data.path`` may be a ``save_to_disk`` directory, a local .jsonl/.json/.csv/.parquet file, a local
    directory of such files, or a hub dataset id (loaded from the local Hugging Face cache when offline).

    Raises
    ------
    FileNotFoundError
        A local path that does not exist or holds no data files; a hub id that cannot be loaded (offline
        and not cached: the message says how to get it and to point ``data.path`` at a local copy).
    ValueError
        ``data.split`` is not a split of the dataset, or its files cannot be parsed.
    """
    local = Path(cfg.path).expanduser()
    if local.is_dir():
        if any((local / marker).is_file() for marker in _SAVED_MARKERS):
            return load_saved(local, cfg.split)
        return _local_dir(local, cfg)
    if local.is_file():
        builder = FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"data.path: file '{cfg.path}' has unsupported extension '{local.suffix}'; "
                             f"expected one of {sorted(FILE_BUILDERS)} or a dataset directory")  # fmt: skip
        return _read_file(local, builder, cfg.path)
    if _looks_local(cfg.path):
        raise FileNotFoundError(
            f"data.path: local dataset directory or file '{cfg.path}' not found (data.source=hf reads a "
            "save_to_disk directory, a directory of data files, a data file, or a hub dataset id)"
        )
    try:
        return datasets.load_dataset(cfg.path, split=cfg.split)
    except ValueError as err:
        if not any(sign in str(err) for sign in _OFFLINE_SIGNS):
            raise ValueError(f"data.split / data.path: cannot load split '{cfg.split}' of '{cfg.path}': "
                             f"{_one_line(err, 300)}") from err  # fmt: skip
        failure: Exception = err
    except Exception as err:  # ConnectionError, hub errors, missing files: all mean "not available here"
        failure = err
    raise FileNotFoundError(
        f"data.path: hub dataset '{cfg.path}' (data.split='{cfg.split}') is not available offline "
        f"({type(failure).__name__}: {_one_line(failure)}). Runs use Hugging Face offline mode "
        f"(HF offline={_offline_mode()}), so a hub dataset loads only from the local cache. Download it "
        f"where there is network, e.g. python -c \"import datasets; datasets.load_dataset('{cfg.path}')"
        ".save_to_disk('DIR')\", copy DIR here and set data.path=DIR (or export HF_HUB_OFFLINE=0 "
        "HF_DATASETS_OFFLINE=0 to allow downloads)"
    ) from failure
