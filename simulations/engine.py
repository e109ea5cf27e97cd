"""Run a validated config on Flower's Simulation Engine (Ray backend), in process.

Each virtual client is a ClientApp call inside a long-lived Ray actor, so the per-process caches
in :mod:`fedlora.models` and :mod:`fedlora.data` hold the base model and data across rounds and
clients: one load per worker, whatever the number of rounds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

# Offline and quiet by default; a user with network can export HF_HUB_OFFLINE=0.
for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # e.g. the expected "classifier MISSING" load report
    "TQDM_DISABLE": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}.items():
    os.environ.setdefault(_key, _value)

from fedlora.config.schema import RunConfig  # noqa: E402

log = logging.getLogger(__name__)


def simulate(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run ``cfg`` with ``federation.num_clients`` virtual SuperNodes; return the run summary."""
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import make_server_app

    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    fed = cfg.federation
    # Ray binds its services to the node address: keep them on loopback (single-machine simulation).
    init_args: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING, "_node_ip_address": "127.0.0.1",
    }
    if fed.ray_num_cpus:
        init_args["num_cpus"] = fed.ray_num_cpus
    backend_config = {
        "client_resources": {"num_cpus": fed.client_num_cpus, "num_gpus": fed.client_num_gpus},
        "init_args": init_args,
    }
    logging.getLogger("flwr").propagate = False  # Hydra's root handler would print flwr lines twice
    run_simulation(
        server_app=make_server_app(cfg, out_dir),
        client_app=client_app,
        num_supernodes=fed.num_clients,
        backend_name="ray",
        backend_config=backend_config,
    )
    if not summary_path.exists():
        raise RuntimeError(
            f"the simulation ended without a summary in {out_dir}; see the log above for the error"
        )
    return json.loads(summary_path.read_text())
