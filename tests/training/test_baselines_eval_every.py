"""The comparison baselines follow ``federation.eval_every`` like a federated run: same rounds scored."""

from __future__ import annotations

import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl
from fedlora.training.baselines import run_centralized, run_local_only


@pytest.mark.parametrize("runner", [run_centralized, run_local_only], ids=["centralized", "local"])
def test_baselines_evaluate_on_the_federated_schedule(runner, tmp_path):
    cfg = compose(["preset=smoke", f"output_dir={tmp_path}", "federation.num_rounds=3",
                   "federation.eval_every=2", "train.local_steps=1"])
    summary = runner(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert [r["round"] for r in rows if "eval_accuracy" in r] == [0, 2, 3]
    assert all("train_loss" in r for r in rows[1:])
    assert summary["final"]["eval_accuracy"] == rows[3]["eval_accuracy"]
    if runner is run_local_only:  # per-client scores only on the evaluated rounds too
        scored = sorted({c["round"] for c in read_jsonl(tmp_path / "clients.jsonl") if "eval_accuracy" in c})
        assert scored == [2, 3]
