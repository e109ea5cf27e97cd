"""Differential privacy end to end: ``python -m simulations.run`` with privacy=central and
privacy=local on the smoke preset (2 clients, both sampled: q = 1) reports every round's epsilon,
the last equal to dp-accounting's for the rounds released, in the metrics, the summary, the model
card and the adapter's fedlora.json; a privacy.target_epsilon between rounds 1 and 2 ends a
3-round run after round 1, still a success."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl
from fedlora.strategies.privacy_accountant import Accountant
from fedlora.strategies.privacy_guard import PrivacyGuard
from tests.integration.runs import ROOT

pytestmark = pytest.mark.integration

SIGMA, DELTA, CLIP = 1.0, 1e-5, 1.0  # conf/privacy/{central,local}.yaml
ROUNDS = 2  # preset=smoke


def _run(overrides: list[str], out: Path) -> dict[str, Any]:
    """Run a simulation in a subprocess; assert it exits 0 and return its summary."""
    proc = subprocess.run([sys.executable, "-m", "simulations.run", "preset=smoke", *overrides,
                           f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module", params=["central", "local"])
def private_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    mode = request.param
    out = tmp_path_factory.mktemp(f"dp-{mode}")
    overrides = [f"privacy={mode}", "privacy.noise_seed=0"]
    return mode, overrides, out, _run(overrides, out)


def test_every_round_reports_the_accountants_epsilon(private_run):
    mode, _, out, summary = private_run
    acc = Accountant(mode, SIGMA, DELTA, 2, 2)  # smoke: 2 of 2 clients every round
    rows = read_jsonl(out / "metrics.jsonl")
    trained = [r for r in rows if r["round"] > 0]
    assert [r["round"] for r in trained] == list(range(1, ROUNDS + 1))
    eps = [r["dp_epsilon"] for r in trained]
    assert all(b >= a for a, b in itertools.pairwise(eps)), eps
    # each round: central one noised aggregate, local one release per client (both sampled every round)
    for r in trained:
        assert r["dp_epsilon"] == pytest.approx(acc.epsilon_after(r["round"]), rel=1e-9)
        assert r["dp_releases"] == r["round"] and r["dp_delta"] == DELTA
        assert ("dp_noise_std" in r) == (mode == "central")
    if mode == "central":
        assert all(r["dp_noise_std"] == pytest.approx(SIGMA * CLIP / 2) for r in trained)
    assert summary["status"] == "completed" and summary["rounds_done"] == ROUNDS
    privacy = summary["privacy"]
    assert privacy["mode"] == mode and privacy["releases"] == ROUNDS
    assert privacy["epsilon"] == pytest.approx(acc.epsilon_after(ROUNDS), rel=1e-9)
    assert privacy["sampling_rate"] == 1.0 and "stopped_after_round" not in privacy


def test_exported_adapter_records_the_privacy(private_run):
    mode, _, _, summary = private_run
    adapter = Path(summary["adapter_dir"])
    eps = Accountant(mode, SIGMA, DELTA, 2, 2).epsilon_after(ROUNDS)
    row = [line for line in (adapter / "README.md").read_text().splitlines()
           if line.startswith("| differential privacy |")]
    assert len(row) == 1, "the model card needs exactly one differential-privacy row"
    assert f"{mode} DP" in row[0] and f"epsilon {eps:.4g}" in row[0] and f"delta {DELTA:g}" in row[0]
    manifest = json.loads((adapter / "fedlora.json").read_text())
    recorded = manifest["privacy"]
    assert (recorded["mode"], recorded["clipping_norm"], recorded["noise_multiplier"], recorded["delta"]) == (
        mode, CLIP, SIGMA, DELTA)
    assert recorded["epsilon"] == pytest.approx(eps, rel=1e-9) and recorded["releases"] == ROUNDS


def test_the_ledger_is_rebuilt_from_the_runs_records(private_run):
    mode, overrides, out, summary = private_run
    guard = PrivacyGuard(compose(["preset=smoke", *overrides]))
    guard.restore(read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "clients.jsonl"),
                  read_jsonl(out / "rejected.jsonl"))
    assert guard.releases() == ROUNDS
    assert guard.epsilon() == pytest.approx(summary["privacy"]["epsilon"], rel=1e-9)
    if mode == "local":
        assert dict(guard.participations) == {0: ROUNDS, 1: ROUNDS}


def test_a_target_epsilon_ends_the_run_before_it_is_exceeded(tmp_path: Path):
    acc = Accountant("central", SIGMA, DELTA, 2, 2)
    first, second = acc.epsilon_after(1), acc.epsilon_after(2)
    target = (first + second) / 2
    summary = _run(["privacy=central", "privacy.noise_seed=0", "federation.num_rounds=3",
                    f"privacy.target_epsilon={target}"], tmp_path / "run")
    assert summary["status"] == "completed"
    privacy = summary["privacy"]
    assert privacy["stopped_after_round"] == 1 and privacy["releases"] == 1
    assert privacy["epsilon"] == pytest.approx(first, rel=1e-9) and privacy["epsilon"] <= target
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[-1]["dp_epsilon"] == pytest.approx(first, rel=1e-9)
