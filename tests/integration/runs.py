"""Helpers for tests that drive ``python -m simulations.run`` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from fedlora.results.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def checkpointed_round(out: Path) -> int:
    """The round of ``out``'s checkpoint, or -1 while there is none."""
    try:
        return load_checkpoint(out).round
    except CheckpointError:
        return -1


def start_run(overrides: list[str], console: IO[str]) -> subprocess.Popen:
    """Start a simulation whose output goes to ``console`` (a file: an unread pipe would block it)."""
    return subprocess.Popen([sys.executable, "-m", "simulations.run", *overrides], cwd=ROOT,
                            stdout=console, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, rnd: int, log: Path, timeout_s: float) -> None:
    """Poll until round ``rnd`` is checkpointed; fail with the console tail if the run dies or stalls."""
    deadline = time.monotonic() + timeout_s
    while checkpointed_round(out) < rnd:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"round {rnd} was not checkpointed within {timeout_s:g} s"
        time.sleep(0.2)


def run_to_end(overrides: list[str], out: Path, timeout_s: float = 600) -> dict:
    """Run ``python -m simulations.run`` to completion into ``out``; return its ``summary.json``.

    Fails with the console tail when the run exits non-zero.
    """
    import json

    proc = subprocess.run([sys.executable, "-m", "simulations.run", *overrides, f"output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads((Path(out) / "summary.json").read_text())
