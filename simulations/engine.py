"""Run a validated config on Flower's Simulation Engine (Ray backend), in process.

Each virtual client is a ClientApp call inside a long-lived Ray actor, so the per-process caches
in :mod:`fedlora.models` and :mod:`fedlora.data` hold the base model and data across rounds and
clients: one load per worker, whatever the number of rounds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from fedlora.config.schema import RunConfig
from server.stoppable_grid import RunStopped

log = logging.getLogger(__name__)


@contextmanager
def _graceful_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``stop`` instead of raising; a second one raises as usual.

    A KeyboardInterrupt inside ``run_simulation`` leaves Flower's client worker threads waiting on
    Ray while Flower shuts Ray down, which can crash the interpreter at exit (SIGSEGV) and leaves
    the ServerApp thread waiting out the round timeout. With ``stop`` set instead, the server's
    :class:`~server.stoppable_grid.StoppableGrid` raises at its next wait, Flower sees the
    ServerApp end and stops its workers after the clients' current tasks, and ``run_simulation``
    returns normally. Only the main thread can own the handler; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("Ctrl-C: stopping after the clients' current tasks (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def simulate(cfg: RunConfig, out_dir: Path, worker_logs: bool = True) -> dict[str, Any]:
    """Run ``cfg`` with ``federation.num_clients`` virtual SuperNodes; return the run summary.

    :func:`fedlora.preflight.preflight` runs first, before Ray starts or any weights load, and
    raises :class:`~fedlora.preflight.PreflightError` listing every problem; nothing in
    ``out_dir`` changes until it passes. A run that stopped because rounds failed returns its
    summary with ``status == "failed"``.

    ``worker_logs=False`` keeps the clients' log lines (local steps) in Ray's session log files
    instead of forwarding them to this console: a comparison's console shows only its progress.
    """
    from fedlora.preflight import clear_previous_run, client_gpus, preflight

    out_dir = Path(out_dir)
    preflight(cfg, out_dir)
    if cfg.overwrite:
        clear_previous_run(out_dir)

    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from fedlora.training.node import SIMULATION_ENV
    from server.app import make_server_app

    # The virtual nodes are this user's processes: they read the run config's data and model
    # (a deployed node decides those in its node config). Ray's workers inherit the variable.
    os.environ[SIMULATION_ENV] = "1"
    summary_path = out_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # a resumed run's old summary (preflight allowed the resume)
    fed = cfg.federation
    # Ray binds its services to the node address: keep them on loopback (single-machine simulation).
    init_args: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING, "_node_ip_address": "127.0.0.1",
        "log_to_driver": worker_logs,
    }
    if fed.ray_num_cpus:
        init_args["num_cpus"] = fed.ray_num_cpus
    backend_config = {
        "client_resources": {"num_cpus": fed.client_num_cpus, "num_gpus": client_gpus(cfg)},
        "init_args": init_args,
    }
    logging.getLogger("flwr").propagate = False  # Hydra's root handler would print flwr lines twice
    stop = threading.Event()
    with _graceful_ctrl_c(stop):
        try:
            run_simulation(
                server_app=make_server_app(cfg, out_dir, stop=stop),
                client_app=client_app,
                num_supernodes=fed.num_clients,
                backend_name="ray",
                backend_config=backend_config,
            )
        except KeyboardInterrupt:
            stop.set()  # a second Ctrl-C: release the ServerApp thread too
            raise
        except RunStopped:
            pass  # raised below as KeyboardInterrupt
    if stop.is_set() and not summary_path.exists():  # (a Ctrl-C during the export let it finish)
        raise KeyboardInterrupt(f"run stopped by Ctrl-C; finished rounds are checkpointed in {out_dir}")
    if not summary_path.exists():
        raise RuntimeError(
            f"the simulation ended without a summary in {out_dir}; see the log above for the error"
        )
    return json.loads(summary_path.read_text())
