"""The one-file checkpoint: atomic, complete, and a resume that refuses a different experiment."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedlora.config import compose
from fedlora.results.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_changes,
    config_dict,
    data_fingerprint,
    experiment_changes,
    load_checkpoint,
    resume_problems,
    save_checkpoint,
)


def _ckpt(cfg, rnd: int = 2) -> Checkpoint:
    gen = torch.Generator().manual_seed(0)
    return Checkpoint(
        round=rnd, strategy=cfg.strategy.name, config=config_dict(cfg),
        data_fingerprint=data_fingerprint(cfg),
        state={"a": torch.randn(3, 4, generator=gen), "meta.round": torch.tensor(7)},
        rows=[{"round": 0, "eval_accuracy": 0.5}, {"round": 1, "eval_accuracy": 0.75}],
        clients=[{"round": 1, "partition_id": 0}], rejected=[{"round": 1, "reason": "nan"}],
        failed_rounds=[],
        best={"round": 1, "metric": "eval_accuracy", "value": 0.75, "rank": 4, "alpha": 8.0},
        best_state={"b": torch.ones(2)},
    )


def test_checkpoint_round_trips_everything(tmp_path):
    cfg = compose(["preset=smoke"])
    written = _ckpt(cfg)
    path = save_checkpoint(tmp_path, written)
    assert path.name == "checkpoint.safetensors" and not list(path.parent.glob("*.tmp"))
    read = load_checkpoint(tmp_path)
    assert read.round == 2 and read.strategy == cfg.strategy.name and read.config == config_dict(cfg)
    assert torch.equal(read.state["a"], written.state["a"]) and int(read.state["meta.round"]) == 7
    assert torch.equal(read.best_state["b"], torch.ones(2))
    assert read.rows == written.rows and read.rejected == written.rejected and read.best == written.best


def test_a_second_save_replaces_the_first_whole(tmp_path):
    cfg = compose(["preset=smoke"])
    save_checkpoint(tmp_path, _ckpt(cfg, 1))
    save_checkpoint(tmp_path, _ckpt(cfg, 2))
    assert load_checkpoint(tmp_path).round == 2


def test_missing_and_legacy_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint/checkpoint\.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text('{"round": 1}')
    with pytest.raises(CheckpointError, match="older fedlora"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint_is_an_error_not_a_crash(tmp_path):
    cfg = compose(["preset=smoke"])
    path = save_checkpoint(tmp_path, _ckpt(cfg))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


def test_config_changes_name_every_differing_key():
    old = config_dict(compose(["preset=smoke"]))
    new = config_dict(compose(["preset=smoke", "lora.r=2", "train.lr=0.1", "federation.num_rounds=9"]))
    changes = config_changes(old, new)
    assert set(changes) == {"lora.r", "train.lr", "federation.num_rounds"}
    assert changes["lora.r"] == (4, 2)
    assert set(experiment_changes(old, new)) == {"lora.r", "train.lr"}  # more rounds stay allowed


def test_resume_with_changed_rank_or_data_file_is_refused_naming_the_keys(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    run = tmp_path / "run"
    base = ["preset=smoke", "data=files", f"data.path={data}"]
    save_checkpoint(run, _ckpt(compose(base)))
    ok = compose([*base, f"resume={run}", "federation.num_rounds=5", "export.select=best"])
    assert resume_problems(ok) == []
    problems = resume_problems(compose([*base, f"resume={run}", "lora.r=2", "train.lr=0.5"]))
    assert len(problems) == 2
    assert problems[0].startswith("lora.r: the run in") and "4" in problems[0] and "2" in problems[0]
    assert problems[1].startswith("train.lr:")
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text())
    assert [p.split(":")[0] for p in resume_problems(compose([*base[:2], f"data.path={other}",
                                                               f"resume={run}"]))] == ["data.path"]
    data.write_text('{"text": "b", "label": "y"}\n')  # same path, edited content
    edited = resume_problems(compose([*base, f"resume={run}"]))
    assert len(edited) == 1 and edited[0].startswith("data.path:") and "changed" in edited[0]


def test_resume_below_the_finished_rounds_is_refused(tmp_path):
    cfg = compose(["preset=smoke", "federation.num_rounds=3"])
    save_checkpoint(tmp_path, _ckpt(cfg, 3))
    resumed = dataclasses.replace(cfg, resume=str(tmp_path),
                                  federation=dataclasses.replace(cfg.federation, num_rounds=2))
    assert any(p.startswith("federation.num_rounds") for p in resume_problems(resumed))
