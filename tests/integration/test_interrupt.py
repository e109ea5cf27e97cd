"""Ctrl-C on a simulation: the process ends promptly with status 130 (it used to wait on Flower's
ServerApp thread for the round timeout, or crash at exit), says how to continue, and the printed
command resumes after the last checkpointed round."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl
from tests.integration.runs import checkpointed_round, start_run, wait_for_checkpoint

pytestmark = pytest.mark.integration


def _rounds(out: Path) -> list[int]:
    return [row["round"] for row in read_jsonl(out / "metrics.jsonl")]


def test_ctrl_c_ends_the_run_and_it_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = ["preset=smoke", "federation.num_rounds=200", f"output_dir={out}"]
    log = tmp_path / "console.txt"  # a file, not a pipe: an unread pipe would block the run
    with log.open("w") as console:
        proc = start_run(overrides, console)
        try:
            wait_for_checkpoint(proc, out, 1, log, timeout_s=600)
            proc.send_signal(signal.SIGINT)
            # Bounded so that a regression fails rather than hangs: without the graceful stop this
            # waited for federation.round_timeout_s (an hour) per remaining round.
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text()
    assert proc.returncode == 130, err[-3000:]  # not -11: no crash at exit
    assert "Traceback" not in err, err[-3000:]
    assert "continue with: python -m simulations.run" in err and f"resume={out}" in err

    from simulations.engine import simulate

    done = checkpointed_round(out)
    cfg = compose(["preset=smoke", f"output_dir={out}", f"federation.num_rounds={done + 1}", f"resume={out}"])
    summary = simulate(cfg, out)
    assert _rounds(out) == list(range(done + 2))
    assert summary["rounds"] == done + 1
