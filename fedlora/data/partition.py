"""Central test set + per-client partitions, built once per process and reused every round.

Why cached and seeded: a Flower simulation worker serves many clients over many rounds; re-reading a
corpus and re-partitioning for each ``ClientApp`` call would dominate run time, and every process
(server, each worker) must see the *same* split or the central test set would leak into training.
So :func:`build_splits` is a pure function of ``(DataConfig, task, num_partitions)`` - no hash-order
or wall-clock dependence - and memoised per process. Partitioning itself is delegated to
``flwr-datasets`` partitioners so the schemes match what Flower users know.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import datasets
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from fedlora.config.choices import PARTITIONERS
from fedlora.config.schema import DataConfig
from fedlora.data.central import column_values, split_central_test
from fedlora.data.sources import check_task, load_source

logger = logging.getLogger(__name__)

_GROUP = "__fedlora_group__"
_CACHE_SIZE = 4
_SPLITS: OrderedDict[tuple[str, str, int], FederatedSplits] = OrderedDict()
_CLIENTS: dict[tuple[str, str, int, int], ClientData] = {}
_LOCK = threading.RLock()


@dataclass(frozen=True)
class ClientData:
    """One client's local data: ``train`` for fitting, ``heldout`` for federated evaluation."""

    train: datasets.Dataset
    heldout: datasets.Dataset


@dataclass(frozen=True)
class FederatedSplits:
    """A central test set and the client partitions drawn from the remaining pool."""

    central_test: datasets.Dataset
    partitions: tuple[datasets.Dataset, ...]
    labels: tuple[str, ...] | None
    group_names: tuple[str, ...] | None

    @property
    def num_partitions(self) -> int:
        """Number of client partitions."""
        return len(self.partitions)

    def client(self, partition_id: int, heldout_fraction: float, seed: int) -> ClientData:
        """Split one partition into local train / held-out data.

        Parameters
        ----------
        partition_id : int
            Index into :attr:`partitions`.
        heldout_fraction : float
            Fraction of the partition held out (at least one row when > 0 and the partition has two or
            more rows; ``0`` gives an empty ``heldout``).
        seed : int
            Base seed; the split uses ``seed + partition_id`` so clients differ but are reproducible.

        Raises
        ------
        ValueError
            If ``partition_id`` is out of range.
        """
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition_id: {partition_id} out of range; there are {self.num_partitions} partitions "
                f"(0..{self.num_partitions - 1})"
            )
        part = self.partitions[partition_id]
        n_held = round(heldout_fraction * len(part))
        if heldout_fraction > 0:
            n_held = max(1, n_held)
        n_held = min(n_held, len(part) - 1)
        if n_held <= 0:
            return ClientData(train=part, heldout=part.select([]))
        split = part.train_test_split(test_size=n_held, seed=seed + partition_id, keep_in_memory=True)
        return ClientData(train=split["train"], heldout=split["test"])


def _group_column(pool: datasets.Dataset, cfg: DataConfig, task: str) -> str:
    if cfg.partition_field in pool.column_names:
        return cfg.partition_field
    if task == "classification" and cfg.partition_field == cfg.label_field:
        return "label"
    raise ValueError(
        f"data.partition_field: column '{cfg.partition_field}' not in dataset columns {pool.column_names} "
        f"(data.source={cfg.source!r})"
    )


def _by_field(
    pool: datasets.Dataset, cfg: DataConfig, task: str, num_partitions: int
) -> tuple[list[datasets.Dataset], tuple[str, ...]]:
    column = _group_column(pool, cfg, task)
    feature = pool.features[column]
    values = column_values(pool, column)
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.int2str(v) for v in values]
    names = [str(v) for v in values]
    counts = Counter(names)
    ordered = sorted(counts, key=lambda g: (-counts[g], g))
    if len(ordered) < num_partitions:
        raise ValueError(
            f"data.partition_field: column '{column}' has {len(ordered)} groups {ordered[:20]} but "
            f"federation.num_clients={num_partitions}; by_field needs at least one group per client "
            "(lower federation.num_clients or use data.partitioner=iid/dirichlet)"
        )
    kept, dropped = ordered[:num_partitions], ordered[num_partitions:]
    if dropped:
        logger.info(
            "by_field: keeping the %d largest '%s' groups; dropping %d groups (%d rows): %s%s",
            num_partitions, column, len(dropped), sum(counts[g] for g in dropped),
            ", ".join(f"{g}={counts[g]}" for g in dropped[:10]), " ..." if len(dropped) > 10 else "",
        )  # fmt: skip
    keep = set(kept)
    rows = [i for i, name in enumerate(names) if name in keep]
    tagged = pool.add_column(_GROUP, names).select(rows)
    partitioner = NaturalIdPartitioner(partition_by=_GROUP)
    partitioner.dataset = tagged
    natural_to_pid = {str(v): k for k, v in _natural_ids(partitioner).items()}
    parts = [partitioner.load_partition(natural_to_pid[g]).remove_columns(_GROUP) for g in kept]
    return parts, tuple(kept)


def _natural_ids(partitioner: NaturalIdPartitioner) -> dict[int, str]:
    _ = partitioner.num_partitions  # builds the id mapping
    return partitioner.partition_id_to_natural_id


def resolve_partitioner(partitioner: str, task: str) -> str:
    """``data.partitioner`` with ``auto`` made concrete: label skew (``dirichlet``) needs labels, so
    ``auto`` is ``dirichlet`` for classification and ``iid`` for causal LM; others are unchanged."""
    if partitioner != "auto":
        return partitioner
    return "dirichlet" if task == "classification" else "iid"


def partition_pool(
    pool: datasets.Dataset, cfg: DataConfig, task: str, num_partitions: int
) -> tuple[tuple[datasets.Dataset, ...], tuple[str, ...] | None]:
    """Partition the pool with ``data.partitioner`` (``auto``: see :func:`resolve_partitioner`).

    Returns
    -------
    tuple[tuple[datasets.Dataset, ...], tuple[str, ...] | None]
        The partitions (index views of the pool, in memory) and, for ``by_field``, the group of each
        partition, ordered by group size (descending) then name.
    """
    if num_partitions < 1:
        raise ValueError(f"federation.num_clients: expected >= 1, got {num_partitions}")
    if len(pool) < num_partitions:
        raise ValueError(
            f"federation.num_clients: {num_partitions} partitions requested but only {len(pool)} examples "
            "remain after removing the central test set"
        )
    groups = None
    partitioner_name = resolve_partitioner(cfg.partitioner, task)
    if partitioner_name != cfg.partitioner:
        logger.info("data.partitioner=auto: '%s' for model.task=%s", partitioner_name, task)
    if partitioner_name == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = pool
        parts = [partitioner.load_partition(i) for i in range(num_partitions)]
    elif partitioner_name == "dirichlet":
        if task != "classification":
            raise ValueError(
                f"data.partitioner: 'dirichlet' splits by label and needs model.task='classification', "
                f"got '{task}'; use 'iid' or 'by_field'"
            )
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(cfg.dirichlet_alpha),
            min_partition_size=cfg.min_partition_size,
            self_balancing=True,
            seed=cfg.seed,
        )
        partitioner.dataset = pool
        try:
            parts = [partitioner.load_partition(i) for i in range(num_partitions)]
        except ValueError as err:
            raise ValueError(
                f"data.dirichlet_alpha / data.min_partition_size: Dirichlet partitioning of {len(pool)} "
                f"examples into {num_partitions} partitions failed (alpha={cfg.dirichlet_alpha}, "
                f"min_partition_size={cfg.min_partition_size}): {err}"
            ) from err
    elif partitioner_name == "by_field":
        parts, groups = _by_field(pool, cfg, task, num_partitions)
    else:
        raise ValueError(
            f"data.partitioner: expected one of {list(PARTITIONERS)}, got {cfg.partitioner!r}"
        )
    logger.info("%s partitions: sizes %s", partitioner_name, [len(p) for p in parts])
    return tuple(parts), groups


def _key(cfg: DataConfig, task: str, num_partitions: int) -> tuple[str, str, int]:
    return (repr(cfg), task, int(num_partitions))


def build_splits(cfg: DataConfig, task: str, num_partitions: int) -> FederatedSplits:
    """Load ``data.source`` and split it into a central test set and ``num_partitions`` partitions.

    Deterministic given ``cfg`` (same seed -> identical splits in any process) and memoised per
    process on ``(repr(cfg), task, num_partitions)``; call :func:`clear_cache` to drop the memo.

    Parameters
    ----------
    cfg : DataConfig
        The ``data`` config group.
    task : str
        ``"classification"`` or ``"causal_lm"``.
    num_partitions : int
        Number of clients (``federation.num_clients``).

    Returns
    -------
    FederatedSplits
    """
    check_task(task)
    key = _key(cfg, task, num_partitions)
    with _LOCK:
        if key in _SPLITS:
            _SPLITS.move_to_end(key)
            return _SPLITS[key]
        ds = load_source(cfg, task)
        pool, central = split_central_test(ds, cfg, task)
        parts, groups = partition_pool(pool, cfg, task, num_partitions)
        labels = tuple(ds.features["label"].names) if task == "classification" else None
        splits = FederatedSplits(central_test=central, partitions=parts, labels=labels, group_names=groups)
        _SPLITS[key] = splits
        while len(_SPLITS) > _CACHE_SIZE:
            old, _ = _SPLITS.popitem(last=False)
            for client_key in [k for k in _CLIENTS if k[:3] == old]:
                del _CLIENTS[client_key]
        return splits


def load_client_data(cfg: DataConfig, task: str, partition_id: int, num_partitions: int) -> ClientData:
    """One client's local train / held-out data (split by ``data.heldout_fraction``, ``data.seed``; cached).

    Raises
    ------
    ValueError
        If ``partition_id`` is not in ``0..num_partitions-1``.
    """
    key = (*_key(cfg, task, num_partitions), int(partition_id))
    with _LOCK:
        if key not in _CLIENTS:
            splits = build_splits(cfg, task, num_partitions)
            _CLIENTS[key] = splits.client(partition_id, cfg.heldout_fraction, cfg.seed)
        return _CLIENTS[key]


def load_central_test(cfg: DataConfig, task: str, num_partitions: int) -> datasets.Dataset:
    """The server-side test set (disjoint from every partition)."""
    return build_splits(cfg, task, num_partitions).central_test


def label_names(cfg: DataConfig, task: str, num_partitions: int) -> tuple[str, ...] | None:
    """Class names for classification (index = label id), ``None`` for causal LM."""
    return build_splits(cfg, task, num_partitions).labels


def clear_cache() -> None:
    """Forget memoised splits and client data (tests; or after changing data files on disk)."""
    with _LOCK:
        _SPLITS.clear()
        _CLIENTS.clear()
