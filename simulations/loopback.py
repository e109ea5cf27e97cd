"""A real Flower deployment on loopback: SuperLink, SuperNodes and (optionally) resident workers.

Used by the deployment benchmark (:mod:`simulations.bench_deploy`) and the deployment tests. Every
process runs in its own session, working directory and ``FLWR_HOME`` (nodes see nothing of the
server's files, as on separate machines), logs to a file, and is killed with its children by
:meth:`LoopbackDeployment.stop`; every wait is bounded. Insecure transport: the TLS and node
authentication path is exercised by ``tests/integration/test_deployment.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Signal ``proc``'s session, then SIGKILL it and every descendant found before the signal.

    Descendants are collected first because Flower's executors may start processes in sessions of
    their own, and once their parent is gone they are re-parented and no longer reachable: a
    ``flwr-serverapp`` whose SuperLink was stopped mid-run otherwise keeps retrying for good.
    """
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait(timeout=10)


def toml_node_config(values: dict[str, Any]) -> str:
    """``--node-config`` text: Flower parses it as TOML, so strings must be quoted."""
    def one(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return " ".join(f"{k}={one(v)}" for k, v in values.items())


class LoopbackDeployment:
    """``flower-superlink --insecure`` plus one ``flower-supernode`` (and worker) per node config."""

    def __init__(self, base: Path, node_configs: list[dict[str, Any]], workers: bool = False,
                 env: dict[str, str] | None = None):
        self.base = Path(base)
        self.node_configs = node_configs
        self.workers = workers
        self.sock_dir = Path(tempfile.mkdtemp(prefix="flw-"))  # short: Unix socket paths are limited
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    **(env or {})}
        self.env.pop("FEDLORA_SIMULATION", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0

    # -- processes ------------------------------------------------------------------------
    def _start(self, name: str, args: list[str], cwd: Path) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        (cwd / "flwr-home").mkdir(exist_ok=True)
        with (self.base / f"{name}.log").open("a") as out:
            proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self.env, "FLWR_HOME": str(cwd / "flwr-home")},
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def socket_of(self, i: int) -> Path:
        return self.sock_dir / f"w{i}.sock"

    def start_worker(self, i: int, seconds: float = 180.0) -> subprocess.Popen:
        """(Re)start node ``i``'s worker and wait until it answers a ping."""
        from fedlora.deploy.worker import wait_until_ready

        proc = self._start(f"worker{i}", [sys.executable, "-m", "fedlora.deploy.worker",
                                          "--socket", str(self.socket_of(i))], self.base / f"node{i}")
        wait_until_ready(self.socket_of(i), lambda: proc.poll() is None, seconds,
                         lambda: self.log(f"worker{i}"))
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop ``name`` and everything it started (:func:`stop_process`)."""
        proc = self.procs.get(name)
        if proc is not None:
            stop_process(proc, sig)

    def start(self) -> LoopbackDeployment:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        link = self._start("superlink", [str(BIN / "flower-superlink"), "--insecure",
                                         "--disable-runtime-dependency-installation",
                                         "--host", "127.0.0.1", "--port", str(self.port)], self.base / "link")
        self._wait_port(self.port, link, "superlink")
        for i, node_config in enumerate(self.node_configs):
            values = dict(node_config)
            if self.workers:
                self.start_worker(i)
                values["worker"] = str(self.socket_of(i))
            self._start(f"supernode{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                          f"127.0.0.1:{self.port}", "--port", str(free_port()),
                                          "--node-config", toml_node_config(values)], self.base / f"node{i}")
        cli = self.base / "cli"
        cli.mkdir(exist_ok=True)
        (cli / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n'
            "insecure = true\n")
        return self

    def _wait_port(self, port: int, proc: subprocess.Popen, name: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log(name)}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"nothing listens on {port} after {seconds} s:\n{self.log(name)}")

    def _run_args(self, overrides: str) -> list[str]:
        return [str(BIN / "flwr"), "run", str(ROOT), "loopback", "--stream", "-c",
                f'hydra-overrides="{overrides}"']

    def run(self, overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``flwr run <repo> loopback --stream`` with these Hydra overrides; waits for the run's end."""
        return subprocess.run(self._run_args(overrides), cwd=self.base, capture_output=True, text=True,
                              env={**self.env, "FLWR_HOME": str(self.base / "cli")}, timeout=timeout)

    def launch(self, overrides: str) -> subprocess.Popen:
        """Start ``flwr run`` without waiting (output in ``flwr-run.log``); :meth:`stop` ends it."""
        with (self.base / "flwr-run.log").open("a") as out:
            proc = subprocess.Popen(self._run_args(overrides), cwd=self.base, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**self.env, "FLWR_HOME": str(self.base / "cli")})
        self.procs["flwr-run"] = proc
        return proc

    def stop(self) -> None:
        """Stop every process this deployment started (SIGTERM, then SIGKILL after 20 s)."""
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        self.procs.clear()
        for path in self.sock_dir.glob("*"):
            path.unlink(missing_ok=True)
        self.sock_dir.rmdir()

    def __enter__(self) -> LoopbackDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
