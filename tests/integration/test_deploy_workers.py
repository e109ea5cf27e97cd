"""Deployments on loopback with resident node workers (``python -m fedlora.deploy.worker``).

Each test starts a real SuperLink and SuperNodes (each in its own directory and FLWR_HOME, as on
separate machines) through :class:`simulations.loopback.LoopbackDeployment`, which stops every
process it started; every wait is bounded.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from fedlora.results import read_jsonl
from simulations.bench_deploy import adapter_sha, deploy_once
from simulations.loopback import BIN, LoopbackDeployment
from tests.integration.runs import checkpointed_round

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("flower-superlink", path=str(BIN)) is None,
                       reason="flower-superlink is not installed next to this Python"),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path_factory.getbasetemp() / "fedlora-cache"))


def _wait(predicate, what: str, seconds: float, dep: LoopbackDeployment) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        run = dep.procs.get("flwr-run")
        assert run is None or run.poll() is None or predicate(), f"the run ended before {what}:\n" + \
            dep.log("flwr-run")
        assert time.monotonic() < deadline, f"not {what} within {seconds:g} s:\n{dep.log('flwr-run')}"
        time.sleep(0.3)


def _rounds_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return max((r["round"] for r in read_jsonl(path)), default=-1) if path.exists() else -1


def test_workers_load_the_model_once_and_give_the_in_process_adapter_bit_for_bit(tmp_path):
    rows_without, dir_without, _ = deploy_once(tmp_path / "in-process", False, 5, ["preset=smoke"])
    rows_with, dir_with, _ = deploy_once(tmp_path / "workers", True, 5, ["preset=smoke"])
    assert adapter_sha(dir_with) == adapter_sha(dir_without)
    clients = read_jsonl(dir_with / "clients.jsonl")
    assert {c["stage"] for c in clients} == {"train", "evaluate"}
    assert len(clients) == 5 * 2 * 2  # every train and evaluation reply of both nodes, each round
    pids = {c["partition_id"]: set() for c in clients}
    for c in clients:
        assert c["base_model_loads"] == 1, c  # the node's first load served the whole run
        pids[c["partition_id"]].add(c["worker_pid"])
    assert all(len(p) == 1 for p in pids.values()) and len(set.union(*pids.values())) == 2
    assert sum(r["base_model_loads"] for r in rows_with) == 2
    assert sum(r["base_model_loads"] for r in rows_without) == 5 * 2 * 2  # one load per message


def test_a_killed_worker_costs_its_replies_with_reasons_and_rejoins_after_a_restart(tmp_path):
    run_dir = tmp_path / "server-run"
    nodes = [{"partition-id": 0, "num-partitions": 2}, {"partition-id": 1, "num-partitions": 2}]
    with LoopbackDeployment(tmp_path / "dep", nodes, workers=True) as dep:
        run = dep.launch(f"preset=smoke federation.num_rounds=6 federation.min_train_clients=1 "
                         "federation.fraction_evaluate=1.0 "
                         f"federation.min_evaluate_clients=1 output_dir={run_dir}")
        _wait(lambda: _rounds_done(run_dir) >= 1, "round 1 done", 300, dep)
        dep.kill("worker1")  # mid-run: round 2 is starting
        _wait(lambda: _rounds_done(run_dir) >= 2, "round 2 done", 300, dep)
        dep.start_worker(1)  # returns once the new worker answers
        ready_after = _rounds_done(run_dir)  # a round already under way may have found no worker yet
        assert run.wait(timeout=400) == 0, dep.log("flwr-run")
    assert ready_after + 1 < 6, "the restarted worker was ready too late to be checked"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 6
    assert summary["export_check"]["matches"] is True  # nothing on disk was corrupted
    rejected = read_jsonl(run_dir / "rejected.jsonl")
    assert rejected and all(r["partition_id"] == 1 and "fedlora worker" in r["reason"] for r in rejected)
    rounds = {r["round"] for r in rejected}  # from the kill until the new worker was up
    assert 2 in rounds and rounds <= set(range(2, ready_after + 2)), (rounds, ready_after)
    clients = read_jsonl(run_dir / "clients.jsonl")
    back = [c for c in clients if c["round"] > ready_after + 1 and c["partition_id"] == 1]
    assert {(c["round"], c["stage"]) for c in back} == {
        (r, s) for r in range(ready_after + 2, 7) for s in ("train", "evaluate")}  # back every round
    first = [c for c in clients if c["round"] == 1 and c["partition_id"] == 1]
    assert {c["worker_pid"] for c in back}.isdisjoint({c["worker_pid"] for c in first})
    assert {c["base_model_loads"] for c in back} == {1}  # the new worker loaded once


def _node_file(path: Path, rows: int, offset: int) -> Path:
    from fedlora.config import compose
    from fedlora.data import load_source

    cfg = compose(["preset=smoke"])
    ds = load_source(cfg.data, cfg.model.task)
    names = ds.features["label"].names
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(offset, offset + rows):
            writer.writerow([ds[i]["text"], names[ds[i]["label"]]])
    return path


def test_nodes_train_on_their_whole_files_and_a_run_resumes_on_fresh_nodes(tmp_path):
    run_dir = tmp_path / "server" / "run"
    files = [_node_file(tmp_path / "a.csv", 120, 0), _node_file(tmp_path / "b.csv", 77, 200)]
    nodes = [{"partition-id": i, "data-path": str(f), "heldout-fraction": 0.1} for i, f in enumerate(files)]
    overrides = f"preset=smoke federation.num_rounds=4 output_dir={run_dir}"
    with LoopbackDeployment(tmp_path / "first", nodes, workers=True) as dep:
        dep.launch(overrides)
        _wait(lambda: checkpointed_round(run_dir) >= 2, "round 2 checkpointed", 400, dep)
    stopped_at = checkpointed_round(run_dir)
    assert 2 <= stopped_at < 4, stopped_at
    # Fresh nodes (new directories, FLWR_HOMEs and workers) that never saw the server's run directory.
    with LoopbackDeployment(tmp_path / "second", nodes, workers=True) as dep:
        done = dep.run(f"{overrides} resume={run_dir}", timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 4, summary
    train = [c for c in read_jsonl(run_dir / "clients.jsonl") if c["stage"] == "train"]
    assert {c["round"] for c in train} == {1, 2, 3, 4}
    rows = {c["partition_id"]: c["train_rows"] for c in train}
    assert rows == {0: 120 - 12, 1: 77 - 8}  # every row of each file but its local validation split
    resumes = read_jsonl(run_dir / "resumes.jsonl")
    assert resumes and resumes[-1]["after_round"] == stopped_at
