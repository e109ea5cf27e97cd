"""The resident node worker: same answers as the in-process path, one model load across tasks,
clear refusals and errors, survives failed tasks, and a killed worker can be restarted."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import time

import numpy as np
import pytest

from fedlora import protocol as P
from fedlora.deploy.proxy import WorkerError, call_worker
from tests.deploy.worker_helpers import WorkerProcess, short_socket_dir, smoke_train_task, worker_env


@pytest.fixture
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDLORA_SIMULATION", raising=False)
    sock_dir = short_socket_dir()
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        w = WorkerProcess(sock_dir / "w.sock", tmp_path / "worker.log", worker_env(tmp_path / "cache"))
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.kill()
    shutil.rmtree(sock_dir, ignore_errors=True)


def test_worker_answers_like_the_in_process_path_and_loads_once(worker):
    from fedlora.deploy.tasks import run_task

    w = worker()
    assert stat.S_IMODE(os.stat(w.socket).st_mode) == 0o600
    task = smoke_train_task()
    first = call_worker(str(w.socket), task)
    second = call_worker(str(w.socket), dataclasses.replace(task, configs={
        P.CONFIG: {**task.configs[P.CONFIG], P.SERVER_ROUND: 2}}))
    local = run_task(task)
    for key, value in local.arrays[P.ARRAYS].items():
        np.testing.assert_array_equal(first.arrays[P.ARRAYS][key], value)  # bit-identical
    m1, m2 = first.metrics[P.METRICS], second.metrics[P.METRICS]
    assert m1["worker-pid"] == m2["worker-pid"] == w.proc.pid != os.getpid()
    assert m1["base-model-loads"] == m2["base-model-loads"] == 1
    assert m1["num-examples"] == local.metrics[P.METRICS]["num-examples"]


def test_worker_refuses_other_code_and_reports_failed_tasks_then_keeps_serving(worker, monkeypatch):
    import fedlora.deploy.proxy as proxy

    w = worker()
    real = proxy.identity()
    monkeypatch.setattr(proxy, "identity", lambda: {**real, "code": "0" * 16})
    with pytest.raises(WorkerError, match="differs from the app bundle's"):
        call_worker(str(w.socket), smoke_train_task())
    monkeypatch.setattr(proxy, "identity", lambda: real)
    with pytest.raises(WorkerError, match="train failed: ValueError: node config: 'partition-id' is requir"):
        call_worker(str(w.socket), smoke_train_task(node_config={"lora-rank": 2}))
    reply = call_worker(str(w.socket), smoke_train_task())  # still serving
    assert reply.metrics[P.METRICS]["worker-pid"] == w.proc.pid


def test_a_killed_worker_gives_a_clear_error_and_a_restarted_one_serves(worker):
    w = worker()
    w.kill()
    assert w.socket.exists()  # SIGKILL leaves the socket file behind
    with pytest.raises(WorkerError, match=r"no fedlora worker answers at .*-m fedlora\.deploy\.worker"):
        call_worker(str(w.socket), smoke_train_task())
    again = worker()  # replaces the stale socket
    reply = call_worker(str(again.socket), smoke_train_task())
    assert reply.metrics[P.METRICS]["worker-pid"] == again.proc.pid
    assert reply.metrics[P.METRICS]["base-model-loads"] == 1


def test_a_missing_socket_names_the_start_command(tmp_path):
    with pytest.raises(WorkerError, match=r"no fedlora worker socket at .*--socket"):
        call_worker(str(tmp_path / "none.sock"), smoke_train_task())


def test_an_idle_worker_releases_its_models_and_reloads_on_the_next_task(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    sock_dir = short_socket_dir()
    w = WorkerProcess(sock_dir / "w.sock", tmp_path / "worker.log", worker_env(tmp_path / "cache"),
                      "--idle-release-s", "1")
    try:
        w.wait_ready()
        first = call_worker(str(w.socket), smoke_train_task())
        deadline = time.monotonic() + 60
        while "released" not in w.log.read_text():
            assert time.monotonic() < deadline, w.log.read_text()[-2000:]
            time.sleep(0.5)
        second = call_worker(str(w.socket), smoke_train_task())
    finally:
        w.kill()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert first.metrics[P.METRICS]["base-model-loads"] == 1
    assert second.metrics[P.METRICS]["base-model-loads"] == 2  # reloaded after the release, and counted
    for key, value in first.arrays[P.ARRAYS].items():
        np.testing.assert_array_equal(second.arrays[P.ARRAYS][key], value)  # same task, same answer
