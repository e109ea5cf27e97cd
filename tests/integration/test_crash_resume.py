"""Nothing lost: a SIGKILLed run resumes to the same bytes; a run that trained nothing fails loudly.

Real processes: the first test kills ``python -m simulations.run`` (and every process it started,
Ray's included) with SIGKILL after round 2 of 4, resumes it, and compares the exported adapter with
an uninterrupted run's, byte for byte (CPU, seeded). The second makes every client fail, expects
exit code 1 with the reason, then resumes without the fault: the failed round is redone.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys

import psutil
import pytest

from fedlora.config import compose
from fedlora.results import read_jsonl
from fedlora.results.tensorboard import read_scalars
from tests.integration.runs import ROOT, checkpointed_round, start_run, wait_for_checkpoint

pytestmark = pytest.mark.integration
SMOKE = ["preset=smoke", "federation.num_rounds=4", "tensorboard=true"]


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


TIMING = {"seconds", "server_s", "server_cpu_s", "record_s"}


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_sigkill_after_round_2_then_resume_gives_identical_bytes(tmp_path):
    from simulations.engine import simulate

    killed = tmp_path / "killed"
    log = tmp_path / "console.txt"
    with log.open("w") as console:
        proc = start_run([*SMOKE, f"output_dir={killed}"], console)
        try:
            wait_for_checkpoint(proc, killed, 2, log, timeout_s=400)
        finally:
            _kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL
    done = checkpointed_round(killed)
    assert 2 <= done < 4, done
    assert not (killed / "summary.json").exists()
    original_config = (killed / "config.yaml").read_text()

    summary = simulate(compose([*SMOKE, f"resume={killed}"]), killed)
    assert summary["status"] == "completed" and summary["export_check"]["matches"]

    straight = tmp_path / "straight"
    simulate(compose([*SMOKE, f"output_dir={straight}"]), straight)
    resumed_bytes = (killed / "adapter" / "adapter_model.safetensors").read_bytes()
    assert resumed_bytes == (straight / "adapter" / "adapter_model.safetensors").read_bytes()
    # Identical losses, accuracies and bytes; the gap metric (a QR in another process, with its own
    # BLAS thread count) may differ in the 8th digit, as it does between any two processes.
    resumed_rows, straight_rows = (_without_timing(read_jsonl(d / "metrics.jsonl"))
                                   for d in (killed, straight))
    assert [set(r) for r in resumed_rows] == [set(r) for r in straight_rows]
    for got, want in zip(resumed_rows, straight_rows, strict=True):
        gaps = {k for k in want if k.startswith("agg_rel_error")}
        assert {k: got[k] for k in set(want) - gaps} == {k: want[k] for k in set(want) - gaps}
        assert {k: got[k] for k in gaps} == pytest.approx({k: want[k] for k in gaps}, rel=1e-6)
    resumes = read_jsonl(killed / "resumes.jsonl")
    assert [r["after_round"] for r in resumes] == [done]
    # TensorBoard: each round once, the killed run's rounds after its checkpoint purged
    for run in (killed, straight):
        curve = read_scalars(run / "tensorboard")["eval/loss"]
        assert [step for step, _ in curve] == [0, 1, 2, 3, 4]
        assert [v for _, v in curve] == pytest.approx([r["eval_loss"] for r in straight_rows], rel=1e-6)
    assert (killed / "config.yaml").read_text() == original_config  # the resume is in resumes.jsonl


def test_a_run_where_every_client_fails_exits_1_and_resume_redoes_the_round(tmp_path):
    from simulations.engine import simulate

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "simulations.run", "preset=smoke",
                           "faults=[raise@0@2,raise@1@2]", f"output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "run FAILED after 1 good round(s) of 2: round 2 failed: only 0 good replies" in proc.stderr
    assert "injected fault" in proc.stderr and f"resume={out}" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "adapter_dir" not in summary
    assert not (out / "adapter").exists()
    assert checkpointed_round(out) == 1  # the failed round is not checkpointed as done
    assert {r["round"] for r in read_jsonl(out / "rejected.jsonl")} == {2}

    resumed = simulate(compose(["preset=smoke", f"resume={out}", "export.select=best"]), out)
    assert resumed["status"] == "completed"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["clients"] == 2
    assert read_jsonl(out / "rejected.jsonl") == []  # the failed attempt's rows went with it
    scores = [r["eval_accuracy"] for r in rows]
    best = max(range(3), key=lambda i: (scores[i], -i))
    assert resumed["best_round"]["round"] == best and resumed["best_round"]["value"] == scores[best]
    assert resumed["exported_round"] == {"select": "best", "round": best, "metric": "eval_accuracy"}
    assert resumed["export_check"]["matches"]
    assert resumed["export_check"]["server"]["accuracy"] == scores[best]
    assert f"| exported round | {best}, the best by accuracy" in (out / "adapter" / "README.md").read_text()
