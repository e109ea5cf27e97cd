"""Data preflight: open the configured data the way a run will, and report what would go wrong.

Why: a user's own file used to fail 20 s into a run (after Ray started) with a library traceback, or
not fail at all while quietly training on cut-off texts or testing on classes no client ever sees.
:func:`check_data` runs before Ray and before any model weights load. It builds the splits through
the normal pipeline (:func:`fedlora.data.build_splits`, memoised per process, so a simulation's
server reuses them), turns every loading error into a one-line problem, and collects warnings with
numbers: partition sizes, truncation at ``model.max_length``, labels no client trains on. It only
reads the splits; all loading, splitting and tokenizing logic stays in the modules that own it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from fedlora.config.schema import RunConfig
from fedlora.data.central import column_values
from fedlora.data.chat_formats import causal_columns, causal_shape
from fedlora.data.formatting import tokenize_dataset
from fedlora.data.partition import ClientData, FederatedSplits, build_splits, resolve_partitioner
from fedlora.data.sources import load_source

logger = logging.getLogger(__name__)

#: At most this many examples are tokenized to estimate lengths (keeps the check to ~1 s).
SAMPLE_SIZE = 2000
_NO_LIMIT = 1_000_000  # a max_length that cuts nothing: tokenize_dataset then reports full lengths
_SHOWN = 8
_FIELDS = ("data.", "model.", "federation.", "train.", "lora.")


@dataclass
class DataReport:
    """What :func:`check_data` found; a run must not start while ``problems`` is non-empty."""

    problems: list[str] = field(default_factory=list)
    """Each one line, naming the config field and file (and row/line where it applies)."""
    warnings: list[str] = field(default_factory=list)
    """Each one line, with numbers; the run can start."""

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems


def _problem(err: BaseException, cfg: RunConfig) -> str:
    """One line that starts with a config field, from any error raised while loading or splitting."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ValueError | FileNotFoundError):
        return text if text.startswith(_FIELDS) else f"data.source: {text}"
    logger.debug("data check: unexpected error", exc_info=err)
    return (
        f"data.path: unexpected {type(err).__name__} while loading data.source={cfg.data.source!r} "
        f"data.path={cfg.data.path!r}: {text}"
    )


def _listing(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _partition_name(splits: FederatedSplits, pid: int) -> str:
    if splits.group_names:
        return f"partition {pid} ('{splits.group_names[pid]}')"
    return f"partition {pid}"


def _check_sizes(
    report: DataReport, cfg: RunConfig, splits: FederatedSplits, clients: list[ClientData]
) -> None:
    data, n = cfg.data, splits.num_partitions
    used = resolve_partitioner(data.partitioner, cfg.model.task)
    shown = data.partitioner if used == data.partitioner else f"{data.partitioner} ({used})"
    how = f"data.partitioner={shown}, federation.num_clients={n}"
    empty = [_partition_name(splits, i) for i, c in enumerate(clients) if len(c.train) == 0]
    if empty:
        report.problems.append(
            f"federation.num_clients: {len(empty)} of {n} client partitions have no training rows "
            f"({_listing(empty)}) with {how} and {len(splits.central_test)} central test rows; "
            "use fewer clients, more data or data.partitioner=iid"
        )
    batch = cfg.train.batch_size
    small = [
        f"{_partition_name(splits, i)}: {len(c.train)}"
        for i, c in enumerate(clients)
        if 0 < len(c.train) < batch
    ]
    if small:
        report.warnings.append(
            f"train.batch_size: {len(small)} of {n} client partitions have fewer training rows than "
            f"train.batch_size={batch} ({_listing(small)} rows; {how}); each of their local steps "
            "reuses the same few rows"
        )
    if cfg.federation.fraction_evaluate > 0:
        no_heldout = [_partition_name(splits, i) for i, c in enumerate(clients) if len(c.heldout) == 0]
        if no_heldout:
            report.warnings.append(
                f"data.heldout_fraction: {len(no_heldout)} of {n} clients have no held-out rows for "
                f"federated evaluation ({_listing(no_heldout)}; data.heldout_fraction="
                f"{data.heldout_fraction})"
            )
    if len(splits.central_test) < data.central_test_size:
        report.warnings.append(
            f"data.central_test_size: the central test set has {len(splits.central_test)} rows, not "
            f"{data.central_test_size} (capped at 20% of the data); its accuracy is a coarse estimate"
        )
    logger.info(
        "data check: %d central test rows; client training rows %s",
        len(splits.central_test), [len(c.train) for c in clients],
    )  # fmt: skip


def _check_labels(report: DataReport, splits: FederatedSplits, clients: list[ClientData]) -> None:
    names = splits.labels or ()
    central = Counter(column_values(splits.central_test, "label"))
    train = [Counter(column_values(c.train, "label")) for c in clients]
    heldout = Counter()
    for c in clients:
        heldout.update(column_values(c.heldout, "label"))
    trained = Counter()
    for counts in train:
        trained.update(counts)

    test_only = [f"'{names[i]}' ({central[i]} rows)" for i in sorted(central) if i not in trained]
    if test_only:
        report.warnings.append(
            f"data.label_field: label(s) {_listing(test_only)} appear in the central test set but in no "
            "client's training rows; the model cannot learn them and central accuracy counts them as errors"
        )
    held_only = [f"'{names[i]}' ({heldout[i]} rows)" for i in sorted(heldout) if i not in trained]
    if held_only:
        report.warnings.append(
            f"data.label_field: label(s) {_listing(held_only)} appear only in clients' held-out rows "
            "(data.heldout_fraction), in no client's training rows"
        )
    seen = set(central) | set(trained) | set(heldout)
    unused = [f"'{name}'" for i, name in enumerate(names) if i not in seen]
    if unused:
        report.warnings.append(
            f"data.label_field: {len(unused)} of {len(names)} classes have no example in the central test "
            f"set or any client partition: {_listing(unused)} (integer labels 0..K-1 make K classes, and "
            "groups beyond federation.num_clients are not used with data.partitioner=by_field)"
        )
    if len(clients) > 1:
        single = []
        for i in sorted(trained):
            holders = [k for k, counts in enumerate(train) if counts[i]]
            if len(holders) == 1:
                single.append(f"'{names[i]}' ({_partition_name(splits, holders[0])}, {trained[i]} rows)")
        if single:
            report.warnings.append(
                f"data.partitioner: label(s) {_listing(single)} appear in only one client's training rows "
                f"of {len(clients)}; the global adapter learns them only when that client is sampled"
            )


def _sample(parts: list[datasets.Dataset], columns: list[str], size: int, seed: int) -> datasets.Dataset:
    """Up to ``size`` rows drawn uniformly (seeded) from the concatenation of ``parts``."""
    sizes = np.array([len(p) for p in parts])
    total = int(sizes.sum())
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows: dict[str, list] = {c: [] for c in columns}
    for part, start, length in zip(parts, starts, sizes, strict=True):
        local = picked[(picked >= start) & (picked < start + length)] - start
        if len(local):
            chosen = part.select(local.tolist())
            for c in columns:
                rows[c].extend(column_values(chosen, c))
    features = datasets.Features({c: parts[0].features[c] for c in columns})
    return datasets.Dataset.from_dict(rows, features=features)


def _check_lengths(
    report: DataReport, cfg: RunConfig, parts: list[datasets.Dataset], tokenizer: Any, sample_size: int
) -> None:
    parts = [p for p in parts if len(p)]
    if not parts:
        return
    task, limit = cfg.model.task, cfg.model.max_length
    columns = ["text", "label"] if task == "classification" else causal_columns(parts[0].column_names)
    sample = _sample(parts, columns, sample_size, cfg.data.seed)
    try:
        tokenized = tokenize_dataset(sample, tokenizer, task, _NO_LIMIT)
    except ValueError as err:  # e.g. a chat template that refuses a system turn: fail here, not in a worker
        report.problems.append(_problem(err, cfg))
        return
    lengths = np.array([len(ids) for ids in tokenized["input_ids"][:]])
    if not len(lengths):
        return
    total = sum(len(p) for p in parts)
    cut = int((lengths > limit).sum())
    shape = causal_shape(columns) if task == "causal_lm" else None
    what = {"pair": "prompt+response tokens (with the chat template)", "chat": "conversation tokens (with "
            "the chat template)"}.get(str(shape), "tokens")  # fmt: skip
    sampled = len(lengths) < total
    scope = f"{len(lengths)} examples sampled from {total}" if sampled else f"all {total} examples"
    stats = f"median {int(np.median(lengths))} {what}, longest {int(lengths.max())}"
    how = "prompt start first, then response end" if shape in ("pair", "chat") else "end of the text"
    message = (
        f"model.max_length: {cut} of {scope} ({cut / len(lengths):.1%}) are longer than {limit} "
        f"tokens and will be cut ({how}); {stats}"
    )
    if cut:  # even 0.4% (the default tweets at 64 tokens): a user should know what the model never sees
        report.warnings.append(message)
    else:
        logger.info("data check: %s", message)
    positions = getattr(tokenizer, "model_max_length", None)
    declared = isinstance(positions, int) and positions < _NO_LIMIT
    if declared and limit > positions and lengths.max() > positions:
        report.warnings.append(
            f"model.max_length: {limit} is above the {positions} tokens the tokenizer of "
            f"{cfg.model.source!r} declares, and {int((lengths > positions).sum())} of {scope} are longer"
        )


def check_data(cfg: RunConfig, tokenizer: Any | None = None, sample_size: int = SAMPLE_SIZE) -> DataReport:
    """Load and split the configured data as a run would, and report problems and warnings.

    Parameters
    ----------
    cfg : RunConfig
        The validated run config (``data``, ``model.task``/``max_length``/``source``,
        ``federation.num_clients``, ``train.batch_size`` are read).
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        Used to measure token lengths; default ``fedlora.models.build.load_tokenizer(cfg.model)``
        (no model weights are loaded).
    sample_size : int
        At most this many examples are tokenized.

    Returns
    -------
    DataReport
        Never raises for bad data: every loading/splitting error becomes one problem line.
    """
    report = DataReport()
    data, task = cfg.data, cfg.model.task
    splits: FederatedSplits | None = None
    parts: list[datasets.Dataset] = []
    try:
        splits = build_splits(data, task, cfg.federation.num_clients)
    except Exception as err:
        report.problems.append(_problem(err, cfg))
        try:  # the source itself may be fine (e.g. too many clients): still measure its lengths
            parts = [load_source(data, task)]
        except Exception as source_err:
            problem = _problem(source_err, cfg)
            if problem not in report.problems:
                report.problems.append(problem)
            return report
    if splits is not None:
        clients = [splits.client(i, data.heldout_fraction, data.seed) for i in range(splits.num_partitions)]
        _check_sizes(report, cfg, splits, clients)
        if task == "classification":
            _check_labels(report, splits, clients)
        parts = [*splits.partitions, splits.central_test]
    if tokenizer is None:
        from fedlora.models.build import load_tokenizer

        try:
            tokenizer = load_tokenizer(cfg.model)
        except Exception as err:
            text = " ".join(str(err).split())
            report.problems.append(
                text if text.startswith("model.") else f"model.source: cannot load the tokenizer ({text})"
            )
            return report
    _check_lengths(report, cfg, parts, tokenizer, sample_size)
    return report
