"""A user's own CSV with string labels trains end to end on the Simulation Engine (tiny BERT, ~30 s).

Why: string labels from CSV/Parquet used to crash in the label cast (``large_string``); this proves
the whole path - preflight, partitioning, Ray workers, export - works on such a file, and that rows
with a blank label are dropped rather than becoming a class.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedlora.config import compose
from fedlora.data import clear_caches
from fedlora.export import load_exported
from fedlora.results import read_jsonl

pytestmark = pytest.mark.integration

TOPICS = ["business", "sport", "tech"]
WORDS = {"business": "market shares profit", "sport": "match goal team", "tech": "chip code phone"}


def test_csv_with_string_labels_trains_in_a_simulation(tmp_path: Path) -> None:
    from simulations.engine import simulate

    rows = [{"text": f"{WORDS[TOPICS[i % 3]]} item {i}", "label": TOPICS[i % 3]} for i in range(120)]
    rows += [{"text": "no label here", "label": ""}, {"text": "blank label", "label": " "}]
    csv = tmp_path / "news.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "run"
    cfg = compose(["preset=smoke", f"output_dir={out}", "data=files", f"data.path={csv}",
                   "data.partitioner=iid", "federation.num_clients=2", "federation.num_rounds=1",
                   "data.central_test_size=20"])  # fmt: skip
    clear_caches()
    summary = simulate(cfg, out)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in metrics] == [0, 1]
    assert metrics[1]["clients"] == 2 and 0.0 <= metrics[-1]["eval_accuracy"] <= 1.0
    assert summary["rejected_replies"] == 0
    _, _, manifest = load_exported(out / "adapter")
    assert manifest["labels"] == TOPICS  # the blank labels were dropped, not made a class
