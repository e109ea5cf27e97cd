"""With ``federation.central_eval=false`` the server side never loads the base model.

Why: a SuperLink host may have no GPU and no model weights. The unit tests drive the server's
pieces in process (shapes, export); the integration test runs a whole simulation in a subprocess,
where the server runs in the driver process and the clients in Ray workers, so the driver's load
count (``server_base_model_loads`` in summary.json) is the server's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlora.aggregation import GlobalAdapter
from fedlora.config import compose
from fedlora.export.adapter import load_exported, save_adapter, state_checksum
from fedlora.lora.state import get_lora_state
from fedlora.models.build import base_model_loads
from fedlora.results import read_jsonl
from fedlora.training.central import CentralEvaluator
from tests.conftest import random_state
from tests.integration.runs import ROOT

OFF = ["preset=smoke", "federation.central_eval=false"]


pytestmark = pytest.mark.usefixtures("private_model_cache")


def test_evaluator_gives_shapes_without_loading_when_central_eval_is_off() -> None:
    evaluator = CentralEvaluator(compose(OFF))
    shapes = evaluator.adapter_shapes(4)
    assert base_model_loads() == 0
    assert evaluator.labels  # classification: the labels the server sends to the clients
    real = CentralEvaluator(compose(["preset=smoke"])).adapter_shapes(4)  # central eval on: a real load
    assert base_model_loads() == 1
    assert list(shapes.items()) == list(real.items())


def test_export_without_central_eval_loads_nothing_and_reloads_exactly(tmp_path: Path) -> None:
    cfg = compose(OFF)
    evaluator = CentralEvaluator(cfg)
    adapter = GlobalAdapter(random_state(evaluator.adapter_shapes(4), 3, torch.float32), 4, cfg.lora.alpha)
    out = save_adapter(cfg, adapter, evaluator.labels, tmp_path / "adapter",
                       {"state_checksum": state_checksum(adapter.state)})
    assert base_model_loads() == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "fedlora.json",
            "SHA256SUMS"} <= {p.name for p in out.iterdir()}
    assert "## Provenance" in (out / "README.md").read_text()
    model, _, manifest = load_exported(out)  # fresh base from disk + PeftModel.from_pretrained
    state = get_lora_state(model)
    assert sorted(state) == sorted(adapter.state)
    assert all(torch.equal(state[k], adapter.state[k]) for k in adapter.state)
    assert manifest["labels"] == evaluator.labels


@pytest.mark.integration
def test_simulation_without_central_eval_never_loads_the_base_on_the_server(tmp_path: Path) -> None:
    out, console = tmp_path / "run", tmp_path / "console.txt"
    with console.open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "simulations.run", *OFF, f"output_dir={out}"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    assert proc.returncode == 0, console.read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["server_base_model_loads"] == 0
    # ...while every client worker did load it: the count is per process, and it does count.
    assert {row["base_model_loads"] for row in read_jsonl(out / "clients.jsonl")} == {1}
    rows = read_jsonl(out / "metrics.jsonl")
    assert not any(k.startswith("eval_") for row in rows for k in row)
    # the server's own seconds per round (not the wait for clients), its files and the query round
    for row in rows[1:]:
        assert row["server_cpu_s"] > 0 and row["record_s"] > 0
        assert 0 < row["server_s"] < row["seconds"]
    assert summary["discovery_s"] > 0
    model, _, manifest = load_exported(Path(summary["adapter_dir"]))
    assert state_checksum(get_lora_state(model)) == manifest["state_checksum"]
