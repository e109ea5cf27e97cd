"""The run's views: the live progress display and the TensorBoard scalars."""

import io

import pytest

from fedlora.results.console import ProgressDisplay, postfix, wants_bar
from fedlora.results.tensorboard import TensorBoardLogger, read_scalars, tag


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_shows_a_bar_only_on_a_terminal():
    assert wants_bar("auto", _Tty()) and not wants_bar("auto", io.StringIO())
    assert wants_bar("bar", io.StringIO()) and not wants_bar("log", _Tty())


def test_the_bar_counts_rounds_replies_and_shows_the_last_metrics():
    out = _Tty()
    display = ProgressDisplay("auto", num_rounds=3, stream=out).__enter__()
    display.on_round_end({"round": 0, "eval_loss": 2.5})
    display.on_round_start(1)
    display.on_client({"stage": "train"})
    display.on_client({"stage": "train"})
    display.on_round_end({"round": 1, "train_loss": 0.69314718, "eval_loss": 0.5, "clients": 2})
    display.close()
    text = out.getvalue()
    assert "round 1/3" in text and "train: 2 replies" in text
    assert "1/3" in text and "train-loss=0.6931 eval-loss=0.5000" in text
    assert "eval-loss=2.5000" in text  # round 0 shown without advancing the bar
    assert "0/3" in text


def test_log_mode_writes_nothing():
    out = _Tty()
    display = ProgressDisplay("log", num_rounds=3, stream=out).__enter__()
    display.on_round_start(1)
    display.on_round_end({"round": 1, "train_loss": 0.1})
    display.close()
    assert out.getvalue() == "" and postfix({"train_loss": 0.1, "clients": 3}) == "train-loss=0.1000"


def test_tags_group_by_the_first_word():
    assert [tag(k) for k in ("eval_loss", "train_loss", "bytes_up_total", "seconds", "agg_rel_error")] == [
        "eval/loss", "train/loss", "bytes/up_total", "seconds", "agg/rel_error"]


def test_scalars_per_round_and_a_resume_replaces_the_rounds_after_its_checkpoint(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for rnd, loss in enumerate([3.0, 2.0, 1.5, 1.2]):  # rounds 0..3, the run dies after round 3
        first.on_round_end({"round": rnd, "eval_loss": loss, "clients": 2, "note": "x", "ok": True})
    first.close()
    resumed = TensorBoardLogger(tmp_path, resume_after=2)  # its checkpoint was round 2
    for rnd, loss in [(3, 1.25), (4, 1.0)]:
        resumed.on_round_end({"round": rnd, "eval_loss": loss, "clients": 2})
    resumed.close()
    scalars = read_scalars(tmp_path)
    assert scalars["eval/loss"] == [(0, 3.0), (1, 2.0), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert [s for s, _ in scalars["clients"]] == [0, 1, 2, 3, 4]
    assert "note" not in scalars and "ok" not in scalars  # strings and booleans are not scalars


def test_a_missing_tensorboard_package_is_one_clear_problem(monkeypatch, tmp_path):
    import importlib.util

    import fedlora.results.tensorboard as tb

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name))
    assert "pip install tensorboard" in tb.tensorboard_problem()
    with pytest.raises(RuntimeError, match="tensorboard=false"):
        TensorBoardLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
