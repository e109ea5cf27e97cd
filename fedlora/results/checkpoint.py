"""One crash-safe checkpoint per round, and the check that a resumed run is the same experiment.

Why one file: a checkpoint made of several files (tensors, then a JSON with the round number) can
be caught half written by a crash, and a resume then replays a round that the tensors already
contain (FLoRA would add it twice). Here everything a resume needs travels in ONE safetensors
file, written to a temporary name, flushed to disk and renamed over the previous one
(``os.replace`` is atomic on POSIX): the aggregator's tensors, the best round's adapter, and, in
the file's string metadata, the round, the strategy, the metric history (rows, client rows,
rejected rows, failed rounds) and the resolved config. A SIGKILL at any instant leaves either the
previous round's checkpoint or this one, never a mixture.

Client sampling needs no saved RNG state: each round draws from ``random.Random(f"{seed}-{round}")``
(see :class:`fedlora.strategies.lora_strategy.LoraStrategy`), and local training seeds from the
round too, so the round number restores them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedlora.config.schema import RunConfig

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 2

#: Config keys a resume may change: they do not change what is trained or how it is scored.
RESUMABLE_KEYS = (
    "federation.num_rounds", "federation.round_timeout_s", "federation.ray_num_cpus",
    "federation.client_num_cpus", "federation.client_num_gpus", "federation.max_failed_rounds",
    "train.log_every", "model.device", "model.share_weights", "output_dir", "resume", "overwrite", "faults",
    "progress", "tensorboard",
)
RESUMABLE_PREFIXES = ("export.",)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or from a different experiment."""


@dataclass
class Checkpoint:
    """What one round's checkpoint holds."""

    round: int
    strategy: str
    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    data_fingerprint: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed_rounds: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"round", "metric", "value", "rank", "alpha", patterns}
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def has_checkpoint(run_dir: Path) -> bool:
    return checkpoint_path(run_dir).is_file()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (temporary file, fsync, rename); return its path."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"state.{k}": v.detach().to("cpu").contiguous() for k, v in ckpt.state.items()}
    tensors.update({f"best.{k}": v.detach().to("cpu").contiguous() for k, v in ckpt.best_state.items()})
    meta = {
        "format": FORMAT, "round": ckpt.round, "strategy": ckpt.strategy, "config": ckpt.config,
        "data_fingerprint": ckpt.data_fingerprint, "rows": ckpt.rows, "clients": ckpt.clients,
        "rejected": ckpt.rejected, "failed_rounds": ckpt.failed_rounds, "best": ckpt.best,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v, default=str) for k, v in meta.items()})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the checkpoint of ``run_dir``.

    Raises
    ------
    CheckpointError
        If there is none, it is unreadable, or it was written by an older fedlora.
    """
    path = checkpoint_path(run_dir)
    if not path.is_file():
        legacy = Path(run_dir) / CHECKPOINT_DIR / "state.json"
        if legacy.is_file():
            raise CheckpointError(
                f"resume: {run_dir} has a checkpoint from an older fedlora (checkpoint/state.json) that "
                "records no config, so the resume cannot be checked; start a new run"
            )
        raise CheckpointError(
            f"resume: {run_dir} has no {CHECKPOINT_DIR}/{CHECKPOINT_FILE} (no round finished?)"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"resume: cannot read {path}: {err}") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"resume: {path} has format {meta.get('format')!r}, expected {FORMAT}")
    return Checkpoint(
        round=int(meta["round"]), strategy=str(meta["strategy"]), config=meta["config"],
        data_fingerprint=meta.get("data_fingerprint", ""),
        state={k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")},
        best_state={k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")},
        rows=meta.get("rows", []), clients=meta.get("clients", []), rejected=meta.get("rejected", []),
        failed_rounds=meta.get("failed_rounds", []), best=meta.get("best"),
    )


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every flattened key whose value differs between two configs: ``{key: (old, new)}``."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def experiment_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The changes that would make a resumed run a different experiment (see :data:`RESUMABLE_KEYS`)."""
    return {k: v for k, v in config_changes(old, new).items()
            if k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_PREFIXES)}


def data_fingerprint(cfg: RunConfig) -> str:
    """SHA-256 of the user's data file (``data.source=files``), so an edited file is caught on resume.

    Empty for built-in corpora (their content is pinned by the installed package version) and for
    directories.
    """
    path = Path(cfg.data.path).expanduser()
    if cfg.data.source != "files" or not path.is_file():
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resume_problems(cfg: RunConfig) -> list[str]:
    """Why ``cfg.resume`` cannot continue with ``cfg`` (empty when it can), naming each key."""
    try:
        ckpt = load_checkpoint(Path(cfg.resume))
    except CheckpointError as err:
        return [str(err)]
    out = []
    changes = experiment_changes(ckpt.config, config_dict(cfg))
    for key, (old, new) in changes.items():
        out.append(f"{key}: the run in {cfg.resume} used {old!r}, this config says {new!r} "
                   "(a resume must be the same experiment; start a new run to change it)")
    fingerprint = data_fingerprint(cfg)
    edited = bool(ckpt.data_fingerprint and fingerprint) and fingerprint != ckpt.data_fingerprint
    if edited and "data.path" not in changes:
        out.append(f"data.path: {cfg.data.path} changed since the run in {cfg.resume} started "
                   f"(SHA-256 {fingerprint[:12]} vs {ckpt.data_fingerprint[:12]})")
    if ckpt.round > cfg.federation.num_rounds:
        out.append(f"federation.num_rounds: {cfg.federation.num_rounds} is below the {ckpt.round} rounds "
                   f"already finished in {cfg.resume}")
    return out
