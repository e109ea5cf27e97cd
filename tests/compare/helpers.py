"""Independent recomputation of a comparison table from the per-round metric files.

Deliberately shares no code with :mod:`fedlora.compare`: it reads ``metrics.jsonl`` itself and
takes Student-t critical values from a printed table, so a bug in the package's statistics cannot
hide behind the same bug here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

T975 = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451, 5: 2.5705818}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_seed(out_dir: Path, scenario: str, method: str, metric: str) -> list[tuple[float, float]]:
    """(final, best over rounds >= 1) of ``metric`` for each seed directory of a method."""
    values = []
    for seed_dir in sorted((out_dir / scenario / method).glob("seed*")):
        rows = [r for r in rows_of(seed_dir / "metrics.jsonl") if metric in r]
        trained = [r[metric] for r in rows if r["round"] >= 1]
        best = min(trained) if "loss" in metric else max(trained)
        values.append((rows[-1][metric], best))
    return values


def mean_and_half(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, T975[n - 1] * sd / math.sqrt(n)


def csv_row(out_dir: Path, scenario: str, method: str) -> dict[str, str]:
    with open(out_dir / "results.csv") as f:
        return next(r for r in csv.DictReader(f) if r["scenario"] == scenario and r["method"] == method)


def check_table(out_dir: Path, scenario: str, method: str, metric: str, seeds: int) -> None:
    """Assert that results.csv holds the mean and 95% half-width of final and best ``metric``."""
    values = per_seed(out_dir, scenario, method, metric)
    assert len(values) == seeds, (scenario, method, values)
    row = csv_row(out_dir, scenario, method)
    for i, which in enumerate(("final", "best")):
        mean, half = mean_and_half([v[i] for v in values])
        assert math.isclose(float(row[f"{metric}_{which}_mean"]), mean, rel_tol=1e-9, abs_tol=1e-12), which
        assert math.isclose(float(row[f"{metric}_{which}_ci"]), half, rel_tol=1e-6, abs_tol=1e-9), which
        assert math.isclose(float(row[f"{metric}_{which}_lo"]), mean - half, rel_tol=1e-6, abs_tol=1e-9)
