"""User-supplied data: local files (``data.source=files``) and hub / saved datasets (``data.source=hf``).

Why one module: both end in the same step, :func:`canonicalize`, which maps the configured field
names (``data.text_field`` / ``data.label_field`` or ``data.prompt_field`` / ``data.response_field``)
to the canonical columns the rest of ``fedlora`` relies on, and gives labels a ``ClassLabel`` type
so that stratified splits and Dirichlet partitioning work the same as for the built-in corpora.
Errors name the config field and the file, because a wrong column name is the most common mistake.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SAVED_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str, origin: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(
                f"data.split: split '{split}' not in {origin}; available splits {sorted(loaded)}"
            )
        return loaded[split]
    return loaded


def load_saved(path: Path, split: str) -> datasets.Dataset:
    """Load a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    return _pick_split(loaded, split, f"saved dataset '{path}'")


def load_files(cfg: DataConfig) -> datasets.Dataset:
    """Read ``data.path``: a .jsonl/.json/.csv/.parquet file or a ``save_to_disk`` directory.

    Raises
    ------
    FileNotFoundError
        If ``data.path`` does not exist.
    ValueError
        If the file type is not supported or the directory is not a saved dataset.
    """
    path = Path(cfg.path).expanduser()
    if not cfg.path or not path.exists():
        raise FileNotFoundError(f"data.path: file '{cfg.path}' not found")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in _SAVED_MARKERS):
            raise ValueError(
                f"data.path: directory '{cfg.path}' is not a dataset saved with Dataset.save_to_disk "
                f"(none of {list(_SAVED_MARKERS)} found); point data.path at a file instead"
            )
        return load_saved(path, cfg.split)
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"data.path: file '{cfg.path}' has unsupported extension '{path.suffix}'; "
            f"expected one of {sorted(FILE_BUILDERS)} or a save_to_disk directory"
        )
    return datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True)


def load_hub(cfg: DataConfig) -> datasets.Dataset:
    """``datasets.load_dataset(data.path, split=data.split)``, or a local ``save_to_disk`` directory.

    Raises
    ------
    FileNotFoundError
        If the hub dataset cannot be loaded (typically: no network and not in the local cache).
    ValueError
        If the dataset exists but ``data.split`` does not.
    """
    local = Path(cfg.path).expanduser()
    if local.is_dir() and any((local / marker).is_file() for marker in _SAVED_MARKERS):
        return load_saved(local, cfg.split)
    try:
        return datasets.load_dataset(cfg.path, split=cfg.split)
    except ValueError as err:
        raise ValueError(
            f"data.split / data.path: cannot load split '{cfg.split}' of '{cfg.path}': {err}"
        ) from err
    except Exception as err:
        offline = os.environ.get("HF_DATASETS_OFFLINE", "") or os.environ.get("HF_HUB_OFFLINE", "")
        raise FileNotFoundError(
            f"data.path: hub dataset '{cfg.path}' (data.split='{cfg.split}') could not be loaded "
            f"({type(err).__name__}: {err}). Without network access (HF offline mode={offline or 'unset'}) "
            "only datasets already in the local Hugging Face cache load; save it elsewhere with "
            "Dataset.save_to_disk and set data.path to that directory, or use data.source=files"
        ) from err


def _check_column(ds: datasets.Dataset, field: str, column: str, origin: str) -> None:
    if column not in ds.column_names:
        raise ValueError(
            f"data.{field}: column '{column}' not in dataset columns {ds.column_names} ({origin})"
        )


def _check_strings(ds: datasets.Dataset, field: str, column: str, canonical: str, origin: str) -> None:
    feature = ds.features[canonical]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"data.{field}: column '{column}' has type {feature} in {origin}; expected strings")


def _to_class_label(ds: datasets.Dataset, column: str, origin: str) -> datasets.Dataset:
    """Give ``label`` a ``ClassLabel`` type: strings -> sorted names, integers -> names '0'..'K-1'."""
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return ds
    dtype = feature.dtype if isinstance(feature, datasets.Value) else str(feature)
    if dtype in ("string", "large_string"):
        names = sorted(set(ds["label"]))
        return ds.cast_column("label", datasets.ClassLabel(names=names))
    if dtype == "bool" or dtype.startswith(("int", "uint")):
        values = [int(v) for v in ds["label"]]
        if values and min(values) < 0:
            raise ValueError(
                f"data.label_field: column '{column}' in {origin} has negative labels ({min(values)})"
            )
        count = max(values, default=0) + 1
        ds = ds.cast_column("label", datasets.Value("int64"))
        return ds.cast_column("label", datasets.ClassLabel(names=[str(i) for i in range(count)]))
    raise ValueError(
        f"data.label_field: column '{column}' has type {dtype} in {origin}; expected string or integer labels"
    )


def canonicalize(ds: datasets.Dataset, cfg: DataConfig, task: str, origin: str) -> datasets.Dataset:
    """Map configured field names to canonical columns and type the labels.

    Parameters
    ----------
    ds : datasets.Dataset
        The raw loaded dataset.
    cfg : DataConfig
        Supplies the field names and ``data.partition_field`` (kept, under its own name, if present).
    task : str
        ``"classification"`` -> columns ``text``, ``label`` (``ClassLabel``); ``"causal_lm"`` ->
        ``prompt``, ``response``. Rows with a missing value in these columns are dropped.
    origin : str
        Where the data came from, for error messages.

    Returns
    -------
    datasets.Dataset
    """
    if task == "classification":
        mapping = {"text_field": (cfg.text_field, "text"), "label_field": (cfg.label_field, "label")}
    else:
        mapping = {
            "prompt_field": (cfg.prompt_field, "prompt"),
            "response_field": (cfg.response_field, "response"),
        }
    for field, (column, _) in mapping.items():
        _check_column(ds, field, column, origin)
    sources = {column for column, _ in mapping.values()}
    canonical = {name for _, name in mapping.values()}
    group = cfg.partition_field
    keep_group = bool(group) and group in ds.column_names and group not in sources and group not in canonical
    ds = ds.select_columns([column for column, _ in mapping.values()] + ([group] if keep_group else []))
    ds = ds.rename_columns({column: name for column, name in mapping.values() if column != name})
    required = [name for _, name in mapping.values()]
    before = len(ds)
    ds = ds.filter(
        lambda *cols: [all(v is not None for v in row) for row in zip(*cols, strict=True)],
        input_columns=required,
        batched=True,
        keep_in_memory=True,
    )
    if len(ds) < before:
        logger.warning(
            "%s: dropped %d rows with a missing %s", origin, before - len(ds), "/".join(sorted(sources))
        )
    for field, (column, name) in mapping.items():
        if name != "label":
            _check_strings(ds, field, column, name, origin)
    if task == "classification":
        ds = _to_class_label(ds, cfg.label_field, origin)
    return ds
