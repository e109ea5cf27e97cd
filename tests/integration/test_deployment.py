"""A real deployment on loopback: a TLS SuperLink with SuperNode authentication, two registered
SuperNodes with their own ranks, `flwr run` of the smoke preset with HetLoRA, and an unregistered
SuperNode that must be refused. Every process is started in its own session and killed with its
children at the end; every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedlora.deploy.credentials import write_credentials
from fedlora.results import read_jsonl
from simulations.loopback import BIN, ROOT, free_port, stop_process

pytestmark = pytest.mark.integration


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def launcher(tmp_path):
    """Start long-lived Flower processes in their own session; kill each session at the end."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def start(name: str, args: list[str], home: Path) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    env={**env, "FLWR_HOME": str(home)}, start_new_session=True)
        procs.append(proc)
        return proc, log

    start.env = env  # type: ignore[attr-defined]
    yield start
    for proc in procs:  # each with everything it started, whatever session that is in
        stop_process(proc, grace_s=20)


@pytest.mark.skipif(shutil.which("flower-superlink", path=str(BIN)) is None,
                    reason="flower-superlink is not installed next to this Python")
def test_tls_deployment_with_node_auth_runs_hetlora_end_to_end(tmp_path, launcher):
    creds = write_credentials(tmp_path / "certs", supernodes=3)
    link_port, out = free_port(), tmp_path / "run"
    cli_home = tmp_path / "cli-home"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{creds.ca_cert}"\n')
    link, link_log = launcher("superlink", [
        str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(creds.ca_cert),
        "--ssl-certfile", str(creds.server_cert), "--ssl-keyfile", str(creds.server_key),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(link_port)], tmp_path / "link-home")
    _wait_for_port(link_port, link, link_log)

    cli_env = {**launcher.env, "FLWR_HOME": str(cli_home)}
    for pub in creds.supernode_pubs[:2]:  # the third key is never registered
        reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(pub), "test"],
                             env=cli_env, capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr

    nodes = []
    for i, key in enumerate(creds.supernode_keys):
        nodes.append(launcher(f"supernode{i + 1}", [
            str(BIN / "flower-supernode"), "--root-certificates", str(creds.ca_cert),
            "--auth-supernode-private-key", str(key), "--superlink", f"127.0.0.1:{link_port}",
            "--port", str(free_port()), "--node-config", f"partition-id={i % 2} num-partitions=2"],
            tmp_path / f"node{i + 1}-home"))

    intruder, intruder_log = nodes[2]
    try:
        intruder.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"an unregistered SuperNode was not refused:\n{intruder_log.read_text()[-3000:]}")
    assert intruder.returncode != 0 and "Failed to activate SuperNode" in intruder_log.read_text()

    overrides = f"preset=smoke strategy=hetlora lora.ranks=[2,4] output_dir={out}"
    run = subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "test", "--stream",
                          "-c", f'hydra-overrides="{overrides}"'],
                         env=cli_env, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    summary_path = out / "summary.json"
    assert summary_path.exists(), (run.stdout + run.stderr)[-5000:]
    summary = json.loads(summary_path.read_text())
    assert summary["strategy"] == "hetlora" and summary["num_clients"] == 2 and summary["rounds"] == 2
    assert summary["export_check"]["matches"] is True
    rows = read_jsonl(out / "clients.jsonl")
    assert {(r["partition_id"], r["rank"]) for r in rows} == {(0, 2), (1, 4)}
    assert (out / "adapter" / "adapter_config.json").exists()
