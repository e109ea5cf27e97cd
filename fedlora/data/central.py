"""The central (server-side) test set: held out before partitioning, so no client ever trains on it.

Why a module of its own: the hold-out must be identical in every process and class-balanced, and
``Dataset.train_test_split(stratify_by_column=...)`` formats every row in datasets 4 (~7 s on the
37k tweets), so stratification is done here on the label column with numpy and a seeded generator.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np

from fedlora.config.schema import DataConfig

logger = logging.getLogger(__name__)

CENTRAL_TEST_MAX_FRACTION = 0.2


def column_values(ds: datasets.Dataset, column: str) -> list:
    """A column as a python list (slicing is ~20x faster than iterating ``ds[column]`` in datasets 4)."""
    return ds[column][:]


def stratified_indices(labels: list[int], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices into ``(train, test)`` with ``len(test) == size``.

    Each class gets ``size * share`` test rows, rounded by largest remainder (ties -> lower class id).
    Both index arrays are shuffled, so the train pool is not ordered by class. Done in numpy because
    ``Dataset.train_test_split(stratify_by_column=...)`` formats every row (~7 s on 37k tweets).
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * size / len(y)
    alloc = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - alloc), kind="stable")[: size - int(alloc.sum())]:
        alloc[c] += 1
    perm = rng.permutation(len(y))
    test, train = [], []
    for cls, n_test in zip(classes, alloc, strict=True):
        members = perm[y[perm] == cls]
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def split_central_test(
    ds: datasets.Dataset, cfg: DataConfig, task: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out ``data.central_test_size`` rows (at most 20% of the data), stratified by label if classifying.

    Returns
    -------
    tuple[datasets.Dataset, datasets.Dataset]
        ``(pool, central_test)``; the pool is shuffled (``iid`` shards it contiguously).
    """
    size = min(cfg.central_test_size, int(len(ds) * CENTRAL_TEST_MAX_FRACTION))
    if size < 1:
        raise ValueError(
            f"data.central_test_size: the dataset has only {len(ds)} examples, too few to hold out a central "
            f"test set of at most {CENTRAL_TEST_MAX_FRACTION:.0%}"
        )
    if size < cfg.central_test_size:
        logger.info("central test set capped at %d rows (20%% of %d)", size, len(ds))
    if task == "classification":
        train_idx, test_idx = stratified_indices(column_values(ds, "label"), size, cfg.seed)
        return ds.select(train_idx), ds.select(test_idx)
    split = ds.train_test_split(test_size=size, seed=cfg.seed, keep_in_memory=True)
    return split["train"], split["test"]
