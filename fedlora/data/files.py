"""User-supplied data: local files (``data.source=files``) and hub / saved datasets (``data.source=hf``).

Why one module: both end in :func:`canonicalize`, which maps the configured field names (or, for causal
LMs, the ``data.format``) to the canonical columns the rest of ``fedlora`` relies on, drops rows without
a usable value (with a logged count, never as an extra class) and gives labels a ``ClassLabel`` type,
so that stratified splits and Dirichlet partitioning work as for the built-in corpora. Errors are one
line, start with the config field and name the file (and line): a user's file fails in its first
second, not as a library traceback later. Hub loading lives in :mod:`fedlora.data.hub`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig
from fedlora.data.chat_formats import canonical_rows, detection_hint, resolve_format, with_system_prompt
from fedlora.data.chat_rows import row_locator
from fedlora.data.json_rows import read_json_rows

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EXPECTED = {
    ".jsonl": "one JSON object per line (UTF-8)",
    ".json": "a JSON array of objects, or one JSON object per line (UTF-8)",
    ".csv": "comma-separated UTF-8 text with a header row and one row per example",
    ".parquet": "a Parquet table with one row per example",
}
_SAVED_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")
_INT_LITERAL = re.compile(r"[+-]?\d+")
_EXAMPLES = 5


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as err:  # corrupt or partial directories raise many library types
        raise ValueError(
            f"data.path: cannot load saved dataset '{path}' ({_root_cause(err)}); expected a directory "
            "written by Dataset.save_to_disk or DatasetDict.save_to_disk"
        ) from err
    return _pick_split(loaded, split, f"saved dataset '{path}'")


def _root_cause(err: BaseException) -> str:
    """The most telling message in an exception chain (skipping datasets' generic wrapper)."""
    chain = [err]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    telling = [e for e in chain if type(e).__name__ != "DatasetGenerationError" and str(e)]
    picked = telling[0] if telling else err
    first_sentence = str(picked).split(". ", 1)[0].rstrip(".")
    return _one_line(f"{type(picked).__name__}: {first_sentence}")


def _text_problem(path: Path, builder: str) -> str | None:
    """The first line that is not UTF-8, or (JSON) that ``json.loads`` rejects; run after datasets failed."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        return f"line {line} is not UTF-8 text (byte 0x{raw[err.start]:02x})"
    if builder != "json":
        return None
    array = path.suffix.lower() == ".json" and text.lstrip()[:1] == "["  # one document, else JSON Lines
    for number, line in [(1, text)] if array else enumerate(text.splitlines(), start=1):
        try:
            value = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as err:
            return f"line {number + err.lineno - 1} column {err.colno}: {err.msg}"
        if not isinstance(value, list if array else dict):
            return f"line {number} is a JSON {type(value).__name__}, not an object"
    return None


def _read_file(path: Path, builder: str, shown: str) -> datasets.Dataset:
    """``datasets.load_dataset`` for one file, with every failure turned into one ``data.path`` line."""
    suffix = path.suffix.lower()
    expected = f"expected {EXPECTED[suffix]}"
    if path.stat().st_size == 0:
        raise ValueError(f"data.path: file '{shown}' is empty (0 bytes); {expected}")
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # not its error log: our one line instead
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True)
    except Exception as err:  # datasets / pyarrow / pandas raise many types for unreadable files
        if isinstance(err, StopIteration) or "corresponds to no data" in str(err):
            raise ValueError(
                f"data.path: file '{shown}' has no data rows (only a header or blank lines); {expected}"
            ) from err
        problem = _text_problem(path, builder) if builder != "parquet" else None
        reason = problem or _root_cause(err)
        if builder == "json" and problem is None:  # valid JSON objects throughout: mixed value types
            try:
                return read_json_rows(path, reason)
            except Exception as json_err:  # e.g. array items that are not objects: report datasets' reason
                logger.debug("reading %s with json failed too", path, exc_info=json_err)
        raise ValueError(
            f"data.path: file '{shown}' is not readable as {suffix.lstrip('.')}: {reason}; {expected}"
        ) from err
    finally:
        datasets.logging.set_verbosity(level)


def load_files(cfg: DataConfig) -> datasets.Dataset:
    """Read ``data.path``: a .jsonl/.json/.csv/.parquet file or a ``save_to_disk`` directory.

    Raises
    ------
    FileNotFoundError
        If ``data.path`` does not exist.
    ValueError
        If the file type is not supported, the directory is not a saved dataset, or the file is empty,
        has no rows or cannot be parsed (the message names the file, and the line for bad JSON).
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
    return _read_file(path, builder, cfg.path)


def _check_column(ds: datasets.Dataset, field: str, column: str, origin: str) -> None:
    if column not in ds.column_names:
        hint = ""
        if len(ds.column_names) == 1 and any(sep in ds.column_names[0] for sep in (";", "\t", "|")):
            hint = "; the file has a single column: is it separated by ';' or tabs? CSV files must use ','"
        raise ValueError(
            f"data.{field}: column '{column}' not in dataset columns {ds.column_names} ({origin}){hint}"
        )


def _check_strings(ds: datasets.Dataset, field: str, column: str, canonical: str, origin: str) -> None:
    feature = ds.features[canonical]
    # "null": a column whose every value is missing; its rows are dropped (and reported) next.
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null")):
        raise ValueError(f"data.{field}: column '{column}' has type {feature} in {origin}; expected strings")


def _is_blank(value: object) -> bool:
    """``None``, NaN and empty or whitespace-only strings carry no text and no class."""
    text_blank = isinstance(value, str) and not value.strip()
    return value is None or text_blank or (isinstance(value, float) and math.isnan(value))


def _blank_rows(ds: datasets.Dataset, canonical: str) -> list[int]:
    values = ds[canonical][:]
    if isinstance(ds.features[canonical], datasets.ClassLabel):  # datasets marks "no label" with -1
        return [i for i, v in enumerate(values) if v is None or v < 0]
    return [i for i, v in enumerate(values) if _is_blank(v)]


def _drop_blank_rows(
    ds: datasets.Dataset, mapping: dict[str, tuple[str, str]], origin: str
) -> datasets.Dataset:
    """Drop rows with a missing/empty value in any mapped column, one warning per column with a count."""
    total = len(ds)
    dropped: set[int] = set()
    for field, (column, name) in mapping.items():
        rows = _blank_rows(ds, name)
        if not rows:
            continue
        dropped.update(rows)
        shown = ", ".join(str(i + 1) for i in rows[:_EXAMPLES]) + (", ..." if len(rows) > _EXAMPLES else "")
        logger.warning(
            "%s: dropped %d of %d rows with an empty or missing value in column '%s' (data.%s); "
            "data row%s %s (counting from 1)", origin, len(rows), total, column, field,
            "s" if len(rows) > 1 else "", shown,
        )  # fmt: skip
        if len(rows) == total:
            raise ValueError(
                f"data.{field}: column '{column}' is empty or missing in all {total} rows of {origin}"
            )
    keep = [i for i in range(total) if i not in dropped]
    if not keep:
        raise ValueError(
            f"data.path: no row of {origin} has all of {[c for c, _ in mapping.values()]} filled"
        )
    return ds if len(keep) == total else ds.select(keep).flatten_indices(keep_in_memory=True)


def _label_ids(values: list, dtype: str, column: str, origin: str) -> tuple[list[int], list[str]]:
    """Class ids and names: integers (or integer strings) -> names '0'..'max'; other strings -> sorted."""
    field = f"data.label_field: column '{column}' in {origin}"
    if dtype.startswith("float"):
        bad = [v for v in values if not float(v).is_integer()]
        if bad:
            raise ValueError(
                f"{field} has non-integer numbers (e.g. {bad[0]}); expected string or integer labels"
            )
        values = [int(v) for v in values]
    elif dtype in ("string", "large_string", "json"):
        if any(isinstance(v, dict | list) for v in values):
            raise ValueError(f"{field} holds lists or objects; expected one string or integer label per row")
        texts = [str(v).strip() for v in values]
        if not all(_INT_LITERAL.fullmatch(t) for t in texts):
            names = sorted(set(texts))
            index = {name: i for i, name in enumerate(names)}
            return [index[t] for t in texts], names
        values = [int(t) for t in texts]  # "2" and 2 are the same class, whichever format wrote it
    elif dtype != "bool" and not dtype.startswith(("int", "uint")):
        raise ValueError(f"{field} has type {dtype}; expected string or integer labels")
    ints = [int(v) for v in values]
    if ints and min(ints) < 0:
        raise ValueError(f"{field} has negative labels ({min(ints)})")
    return ints, [str(i) for i in range(max(ints, default=0) + 1)]


def _to_class_label(ds: datasets.Dataset, column: str, origin: str) -> datasets.Dataset:
    """Give ``label`` a ``ClassLabel`` type (any of ``string``/``large_string``/JSON/int/float columns)."""
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return ds
    dtype = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__.lower()
    ids, names = _label_ids(ds["label"][:], dtype, column, origin)
    order = ds.column_names
    ds = ds.remove_columns("label").add_column("label", ids, feature=datasets.ClassLabel(names=names))
    return ds.select_columns(order)


def canonicalize(ds: datasets.Dataset, cfg: DataConfig, task: str, origin: str) -> datasets.Dataset:
    """Map configured field names to canonical columns, drop unusable rows and type the labels.

    Parameters
    ----------
    ds : datasets.Dataset
        The raw loaded dataset.
    cfg : DataConfig
        Supplies the field names and ``data.partition_field`` (kept, under its own name, if present).
    task : str
        ``"classification"`` -> ``text``, ``label`` (``ClassLabel``); ``"causal_lm"`` -> a canonical shape
        of :mod:`fedlora.data.chat_formats` for ``data.format``, with ``data.system_prompt`` applied.
        Rows with a missing/NaN/blank text, label, prompt or response are dropped with a warning.
    origin : str
        Where the data came from, for error messages.

    Raises
    ------
    ValueError
        A configured column is missing or has the wrong type, a malformed causal row (named by file
        and line or row), no usable value at all, or labels neither strings nor non-negative integers.
    """
    guessed = False
    if task == "classification":
        mapping = {"text_field": (cfg.text_field, "text"), "label_field": (cfg.label_field, "label")}
        if cfg.format != "auto":
            raise ValueError(f"data.format: '{cfg.format}' is for model.task='causal_lm'; use 'auto' here")
    else:
        fmt, guessed = resolve_format(ds.column_names, cfg, origin)
        if fmt != "prompt_response":
            ds = canonical_rows(ds, fmt, cfg, origin, row_locator(cfg, origin))
            return with_system_prompt(ds, cfg.system_prompt, origin)
        mapping = {
            "prompt_field": (cfg.prompt_field, "prompt"),
            "response_field": (cfg.response_field, "response"),
        }
    try:
        for field, (column, _) in mapping.items():
            _check_column(ds, field, column, origin)
    except ValueError as err:
        raise (ValueError(f"{err}{detection_hint(cfg)}") if guessed else err) from None
    sources = {column for column, _ in mapping.values()}
    canonical = {name for _, name in mapping.values()}
    group = cfg.partition_field
    keep_group = bool(group) and group in ds.column_names and group not in sources and group not in canonical
    ds = ds.select_columns([column for column, _ in mapping.values()] + ([group] if keep_group else []))
    ds = ds.rename_columns({column: name for column, name in mapping.values() if column != name})
    for field, (column, name) in mapping.items():
        if name != "label":
            _check_strings(ds, field, column, name, origin)
    ds = _drop_blank_rows(ds, mapping, origin)
    if task == "classification":
        return _to_class_label(ds, cfg.label_field, origin)
    return with_system_prompt(ds, cfg.system_prompt, origin)
