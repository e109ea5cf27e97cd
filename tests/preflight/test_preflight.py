"""The preflight: every problem at once, before Ray or any model weights, and no result touched."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from fedlora.config import compose
from fedlora.preflight import PreflightError, clear_previous_run, holds_run, preflight


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _finished_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text('{"round": 0}\n')
    (path / "summary.json").write_text("{}")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def test_a_directory_holding_a_run_is_refused_and_left_untouched(tmp_path):
    run = _finished_run(tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(PreflightError) as info:
        preflight(compose(["preset=smoke", f"output_dir={run}"]), run)
    (problem,) = info.value.problems
    assert problem.startswith(f"output_dir: {run} already holds a run")
    assert "overwrite=true" in problem
    assert _snapshot(run) == before


def test_overwrite_true_lets_it_run_and_removes_only_run_files(tmp_path):
    run = _finished_run(tmp_path / "run")
    (run / "my-notes.txt").write_text("keep me")
    cfg = compose(["preset=smoke", f"output_dir={run}", "overwrite=true"])
    preflight(cfg, run)
    assert sorted(clear_previous_run(run)) == ["adapter", "config.yaml", "metrics.jsonl", "summary.json"]
    assert holds_run(run) == [] and (run / "my-notes.txt").read_text() == "keep me"


def test_an_output_dir_below_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PreflightError, match="exists and is not a directory"):
        preflight(compose(["preset=smoke"]), blocker / "run")


def test_every_problem_is_reported_at_once(tmp_path):
    run = _finished_run(tmp_path / "run")
    cfg = compose(["preset=smoke", "data=files", f"data.path={tmp_path / 'missing.csv'}",
                   "lora.target_modules=[query,nope_proj]"])
    with pytest.raises(PreflightError) as info:
        preflight(cfg, run)
    fields = [p.split(":")[0] for p in info.value.problems]
    assert fields[0] == "output_dir" and "data.path" in fields and "lora.target_modules" in fields
    assert str(info.value).startswith("fedlora: cannot start (3 problem(s)):")


def test_target_modules_are_matched_without_loading_weights(tmp_path):
    import fedlora.models.build as build

    loads = build.base_model_loads()
    with pytest.raises(PreflightError) as info:
        preflight(compose(["preset=smoke", "lora.target_modules=[q_proj]"]), tmp_path / "new")
    (problem,) = info.value.problems
    assert problem.startswith("lora.target_modules: ['q_proj'] match no module") and "query" in problem
    assert build.base_model_loads() == loads


def test_a_good_config_passes_and_writes_nothing(tmp_path):
    out = tmp_path / "new"
    assert isinstance(preflight(compose(["preset=smoke"]), out), list)
    assert not out.exists()


def test_the_command_line_exits_2_before_ray_and_keeps_the_run(tmp_path):
    import subprocess

    run = _finished_run(tmp_path / "run")
    before = _snapshot(run)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "simulations.run", "preset=smoke", f"output_dir={run}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray" not in proc.stderr.lower().replace("array", "")
    assert _snapshot(run) == before
