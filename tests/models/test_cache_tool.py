"""``python -m fedlora.models.cache``: list the model cache and prune it by last use."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from fedlora.models import cache
from fedlora.models.sources import LAST_USED, cache_dir, materialise

DAY = 86400


def _entry(root: Path, kind: str, name: str, size: int, days_ago: float | None) -> Path:
    path = root / kind / name
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"x" * size)
    if days_ago is not None:
        (path / LAST_USED).touch()
        stamp = time.time() - days_ago * DAY
        os.utime(path / LAST_USED, (stamp, stamp))
    return path


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    _entry(tmp_path, "shared", "old", 3000, days_ago=30)
    _entry(tmp_path, "shared", "new", 2000, days_ago=1)
    _entry(tmp_path, "quantized", "mid", 1000, days_ago=10)
    _entry(tmp_path, "models", "never-marked", 10, days_ago=None)  # falls back to the dir's mtime
    (tmp_path / "shared" / ".x.tmp-123").mkdir()  # a build in progress (its lock held) is never an entry
    with FileLock(str(tmp_path / "shared" / "x.lock")):
        yield tmp_path


def test_list_shows_every_entry_oldest_first(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert [e.path.name for e in cache.entries()] == ["old", "mid", "new", "never-marked"]
    assert [e.size for e in cache.entries()] == [3000, 1000, 2000, 10]
    assert cache.main(["list"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "4 entries" in out and "old" in out and ".x.tmp" not in out


def test_prune_by_last_use(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert cache.main(["prune", "--unused-days", "5", "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and (root / "shared" / "old").exists()
    assert cache.main(["prune", "--unused-days", "5"]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    left = sorted(e.path.name for e in cache.entries())
    assert left == ["never-marked", "new"]


def test_prune_all_of_one_kind(root: Path) -> None:
    assert cache.main(["prune", "--all", "--kind", "shared"]) == 0
    assert not (root / "shared" / "old").exists() and not (root / "shared" / "new").exists()
    assert (root / "quantized" / "mid").exists() and (root / "models" / "never-marked").exists()


def test_prune_needs_one_rule(root: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["prune"], ["prune", "--all", "--unused-days", "1"], ["prune", "--unused-days", "-1"]):
        with pytest.raises(SystemExit) as exc:
            cache.main(argv)
        assert exc.value.code == 2
    assert "exactly one of --unused-days N or --all" in capsys.readouterr().err
    assert len(cache.entries()) == 4


def test_an_entry_being_built_is_skipped(root: Path, capsys: pytest.CaptureFixture) -> None:
    with FileLock(str(root / "shared" / "old.lock")):
        assert cache.main(["prune", "--all", "--kind", "shared"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and (root / "shared" / "old").exists()
    assert not (root / "shared" / "new").exists()


def test_materialise_marks_each_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    parent = cache_dir() / "models"
    built = materialise(parent, "thing", lambda out: (out.mkdir(), (out / "config.json").write_text("{}")),
                        "a thing")
    marker = built / LAST_USED
    assert marker.exists()
    os.utime(marker, (0, 0))
    materialise(parent, "thing", lambda out: pytest.fail("must not rebuild"), "a thing")
    assert marker.stat().st_mtime > time.time() - 60


def test_materialise_removes_what_a_killed_build_left(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    parent = tmp_path / "models"
    stale = parent / ".thing.tmp-99999"  # a builder killed mid-write (its lock died with it)
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    other = parent / ".other.tmp-99999"  # another entry's build: not this lock's business
    other.mkdir()
    with caplog.at_level("WARNING"):
        materialise(parent, "thing", lambda out: (out.mkdir(), (out / "config.json").write_text("{}")),
                    "a thing")
    assert not stale.exists() and "did not finish" in caplog.text
    assert other.exists()
    assert sorted(p.name for p in parent.iterdir()) == [".other.tmp-99999", "thing", "thing.lock"]


def test_a_killed_build_s_temp_dir_is_listed_and_pruned(root: Path, capsys: pytest.CaptureFixture) -> None:
    left = root / "shared" / ".y.tmp-456"  # its builder died: the lock y.lock is free
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"x" * 500)
    assert [e.path.name for e in cache.entries(kinds=["shared"])] == ["old", "new", ".y.tmp-456"]
    assert cache.main(["list"]) == 0
    assert "did not finish" in capsys.readouterr().out
    assert cache.main(["prune", "--all", "--kind", "shared"]) == 0
    assert not left.exists() and (root / "shared" / ".x.tmp-123").exists()  # the live build stays
