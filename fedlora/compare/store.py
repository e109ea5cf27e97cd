"""Per-run bookkeeping in the comparison directory: what is done, what to resume, what to redo.

Why markers rather than "the directory exists": a run killed half way leaves a directory with
metrics of some rounds; only ``done.json`` (written last, atomically) says a run finished. Each
marker carries the run's config fingerprint, so a run whose config changed since (another
``federation.num_rounds``, a fixed bug in a scenario's overrides) is redone instead of silently
mixed into the table. An interrupted federated run with a checkpoint resumes from its last
finished round (``resume=<run dir>``); anything else starts again in a clean directory.

Files in ``<out_dir>/<scenario>/<method>/seed<k>/``: ``run.json`` (what the run is, written at
start; attempts and their time), ``done.json`` (finished: fingerprint, wall time, summary) or
``failed.json`` (the error), plus the run's own outputs (``metrics.jsonl`` ...).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from fedlora.compare.plan import RunSpec
from fedlora.results.checkpoint import has_checkpoint

DONE, STALE, RESUMABLE = "done", "stale", "resumable"
PARTIAL, FAILED, MISSING = "partial", "failed", "missing"


def run_dir(out_dir: Path, spec: RunSpec) -> Path:
    """Where a run's files live."""
    return Path(out_dir) / spec.run_id


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or unreadable (a torn write)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically, so a marker is either absent or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def status(out_dir: Path, spec: RunSpec) -> str:
    """One of ``done``, ``stale`` (done or started under another config), ``resumable``,
    ``partial`` (started, no checkpoint), ``failed`` or ``missing``."""
    d = run_dir(out_dir, spec)
    done = read_json(d / "done.json")
    if done is not None:
        return DONE if done.get("fingerprint") == spec.fingerprint else STALE
    meta = read_json(d / "run.json")
    if meta is None:
        return PARTIAL if d.is_dir() and any(d.iterdir()) else MISSING
    if meta.get("fingerprint") != spec.fingerprint:
        return STALE
    if (d / "failed.json").exists():
        return FAILED
    return RESUMABLE if _has_checkpoint(d, spec) else PARTIAL


def _has_checkpoint(d: Path, spec: RunSpec) -> bool:
    return spec.kind == "federated" and has_checkpoint(d)


def begin(out_dir: Path, spec: RunSpec) -> tuple[Path, bool]:
    """Prepare the run directory; return it and whether to resume from its checkpoint.

    A run that is stale, partial without a checkpoint, or failed without one starts over in an
    emptied directory. The attempt is appended to ``run.json``.
    """
    d = run_dir(out_dir, spec)
    state = status(out_dir, spec)
    resume = state in (RESUMABLE, FAILED) and _has_checkpoint(d, spec)
    meta = read_json(d / "run.json") if resume else None
    if not resume and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "failed.json").unlink(missing_ok=True)
    meta = meta or {
        "run_id": spec.run_id, "scenario": spec.scenario, "method": spec.method, "kind": spec.kind,
        "seed": spec.seed, "fingerprint": spec.fingerprint, "overrides": list(spec.overrides),
        "command": spec.command if spec.kind == "federated" else None, "attempts": [],
    }
    meta["attempts"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed": resume})
    write_json(d / "run.json", meta)
    return d, resume


def end_attempt(d: Path, seconds: float, outcome: str) -> float:
    """Record the time of this attempt; return the run's wall time over all its attempts."""
    meta = read_json(d / "run.json") or {"attempts": [{}]}
    meta["attempts"][-1].update(seconds=round(seconds, 3), outcome=outcome)
    write_json(d / "run.json", meta)
    return sum(a.get("seconds", 0.0) for a in meta["attempts"])


def finish(d: Path, spec: RunSpec, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Mark a run done (the last file written)."""
    wall = end_attempt(d, seconds, "done")
    done = {"run_id": spec.run_id, "fingerprint": spec.fingerprint, "wall_s": round(wall, 3),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary}
    write_json(d / "done.json", done)
    return done


def fail(d: Path, spec: RunSpec, error: BaseException, trace: str, seconds: float) -> None:
    """Record a failed run; the next invocation retries it."""
    end_attempt(d, seconds, "failed")
    write_json(d / "failed.json", {"run_id": spec.run_id, "fingerprint": spec.fingerprint,
                                   "error": f"{type(error).__name__}: {error}", "traceback": trace})


def load_done(out_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The done marker of a run finished under its current config, else None."""
    done = read_json(run_dir(out_dir, spec) / "done.json")
    return done if done is not None and done.get("fingerprint") == spec.fingerprint else None

