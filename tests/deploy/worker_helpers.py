"""Start a resident worker as a subprocess and build client tasks for it, for the worker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedlora import protocol as P
from fedlora.config.load import compose, node_view, to_yaml
from fedlora.deploy.messages import ClientTask

ROOT = Path(__file__).resolve().parents[2]


def short_socket_dir() -> Path:
    """A private directory with a short path (Unix socket paths are limited to ~100 characters)."""
    return Path(tempfile.mkdtemp(prefix="flw-"))


class WorkerProcess:
    """``python -m fedlora.deploy.worker`` in its own session, logging to a file."""

    def __init__(self, socket_path: Path, log: Path, env: dict[str, str], *extra: str):
        self.socket, self.log = socket_path, log
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fedlora.deploy.worker", "--socket", str(socket_path), *extra],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, seconds: float = 120.0) -> dict[str, Any]:
        from fedlora.deploy.worker import wait_until_ready

        return wait_until_ready(self.socket, lambda: self.proc.poll() is None, seconds,
                                lambda: self.log.read_text()[-3000:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


def worker_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDLORA_SIMULATION"}
    return {**env, "FEDLORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def smoke_train_task(server_round: int = 1, node_config: dict[str, Any] | None = None,
                     overrides: tuple[str, ...] = ()) -> ClientTask:
    """A train task for partition 0 of the smoke preset, starting from the seeded initial adapter."""
    from fedlora.data import label_names
    from fedlora.lora.init import initial_state
    from fedlora.lora.state import expected_shapes
    from fedlora.lora.wire import state_to_numpy
    from fedlora.models.build import build_lora_model

    cfg = compose(["preset=smoke", *overrides])
    labels = list(label_names(cfg.data, cfg.model.task, cfg.federation.num_clients) or [])
    model = build_lora_model(cfg.model, cfg.lora, rank=cfg.lora.r, num_labels=len(labels))
    state = initial_state(expected_shapes(model), cfg.lora.init_seed)
    config = {P.CFG_YAML: to_yaml(node_view(cfg)).encode(), P.WIRE_DTYPE: "float32", P.LABELS: labels,
              P.SERVER_ROUND: server_round, P.LR: cfg.train.lr, P.RANK: cfg.lora.r, P.ALPHA: cfg.lora.alpha}
    return ClientTask(kind="train", configs={P.CONFIG: config}, arrays={P.ARRAYS: state_to_numpy(state)},
                      node_config=node_config or {"partition-id": 0, "num-partitions": 2})
