"""NF4 base models quantized once and saved in the model cache, so later processes skip quantization.

With ``model.quantization=nf4``, ``from_pretrained`` with a ``BitsAndBytesConfig`` reads the
full-precision weights and quantizes them on every process start. A Flower deployment starts a fresh
ClientApp process for every message, so every client paid that every round. transformers can
serialise bitsandbytes 4-bit models, so the first load saves the quantized model to
``<cache>/quantized/<key>/`` and later loads read the packed 4-bit weights instead.

``key`` hashes everything that changes the quantized weights (see :func:`nf4_key`), so a changed
source, head size, dtype, quantization setting or library version gets its own copy rather than a
stale one. Old copies are not deleted automatically: ``python -m fedlora.models.cache`` lists the
cache's entries with their sizes and last use, and prunes them.

A copy without ``config.json`` (with a ``quantization_config``) or without the safetensors files it
names is incomplete and rebuilt; one that exists but fails to load is discarded and rebuilt too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from filelock import FileLock
from transformers import PreTrainedModel

from fedlora.config.schema import ModelConfig
from fedlora.models.sources import ResolvedModel, cache_dir, mark_used, materialise

logger = logging.getLogger(__name__)

Loader = Callable[[str, dict], PreTrainedModel]
"""``load(path, extra_kwargs)``: ``from_pretrained`` with the caller's kwargs, seed and model class."""

KEY_VERSION = 1
"""Bumped when the layout of a saved copy changes, to orphan copies written by older code."""


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def source_fingerprint(path: Path) -> list[tuple[str, int, int]]:
    """Name, size and mtime of the source's top-level files: a model rewritten in place gets a new key.

    Hashing the contents would cost as much as the quantization it saves on a multi-GB model.
    """
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return []
    out = []
    for p in entries:
        try:
            if p.is_file():
                st = p.stat()
                out.append((p.name, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return out


def nf4_key(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, device: torch.device,
            dtype: torch.dtype, quant_kwargs: dict) -> str:
    """A short hash of everything that changes the saved quantized weights.

    Parameters
    ----------
    resolved
        The full-precision source (its path, description and file sizes/mtimes).
    cfg
        Model configuration (task and ``trust_remote_code``).
    num_labels
        Head size for classification, ``None`` for causal LMs (the head is part of the copy).
    device
        Only its type counts: CPU and CUDA bitsandbytes kernels need not quantize bit-identically.
    dtype
        Dtype of the parameters that stay dense (embeddings, norms, head).
    quant_kwargs
        From :func:`fedlora.models.device.quantization_kwargs`; its ``quantization_config`` counts.

    Returns
    -------
    str
        16 hex digits.
    """
    return load_key(resolved, cfg, num_labels, dtype, KEY_VERSION, device=device.type,
                    bnb=quant_kwargs["quantization_config"].to_dict(),
                    bitsandbytes=package_version("bitsandbytes"))


def load_key(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, dtype: torch.dtype,
             version: int, **extra: object) -> str:
    """16 hex digits hashing what a cached copy of a loaded model depends on, plus ``extra``.

    The source (path, description, file sizes and mtimes), the task, the head size, remote code,
    the dtype and the transformers and torch versions; ``version`` orphans copies in an old layout.
    """
    parts = {
        "version": version,
        "path": resolved.path,
        "description": resolved.description,
        "files": source_fingerprint(Path(resolved.path)),
        "task": cfg.task,
        "num_labels": num_labels if cfg.task == "classification" else None,
        "trust_remote_code": cfg.trust_remote_code,
        "dtype": str(dtype),
        "transformers": package_version("transformers"),
        "torch": torch.__version__,
        **extra,
    }
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished quantized copy: a config with a quantization_config and weights.

    Checked before every use so that a partial copy (files removed by hand, a disk that filled up)
    is rebuilt instead of failing deep inside ``from_pretrained``.
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or "quantization_config" not in config:
        return False
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return bool(shards) and all((path / s).is_file() for s in shards)
    return (path / "model.safetensors").is_file()


def _discard(path: Path) -> None:
    """Move an unreadable copy aside and delete it, under the same lock that guards its creation."""
    with FileLock(str(path.parent / f"{path.name}.lock")):
        if not path.exists():
            return
        trash = path.parent / f".{path.name}.bad-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _load_copy(path: Path, quant_kwargs: dict, load: Loader) -> PreTrainedModel | None:
    """Load a saved copy; ``None`` (after discarding it) when it is unreadable."""
    # No quantization_config here: the saved config carries it, and passing one again only warns.
    try:
        return load(str(path), {"device_map": quant_kwargs["device_map"]})
    except torch.OutOfMemoryError:
        raise  # the copy is fine; the device is full
    except Exception as exc:  # a damaged file shows up as any of several error types
        logger.warning("ignoring unreadable nf4 copy %s (%s: %s); rebuilding it", path, type(exc).__name__,
                       exc)
        _discard(path)
        return None


def load_nf4(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, device: torch.device,
             dtype: torch.dtype, quant_kwargs: dict, load: Loader) -> tuple[PreTrainedModel, str]:
    """Load the NF4 base model from its saved copy, quantizing and saving it first if there is none.

    Parameters
    ----------
    resolved, cfg, num_labels, device, dtype, quant_kwargs
        As for :func:`nf4_key`; ``quant_kwargs`` are also passed to ``load`` when quantizing.
    load
        Loads a model directory with the caller's kwargs plus the given extra ones (the caller
        applies the load seed, so a fresh classification head is the one saved in the copy).

    Returns
    -------
    tuple[transformers.PreTrainedModel, str]
        The model and where it came from (``"nf4 copy from <dir>"`` or
        ``"nf4 quantized now, saved to <dir>"``), for the load log line.
    """
    parent = cache_dir() / "quantized"
    final = parent / nf4_key(resolved, cfg, num_labels, device, dtype, quant_kwargs)
    if is_complete(final):
        mark_used(final)
        model = _load_copy(final, quant_kwargs, load)
        if model is not None:
            return model, f"nf4 copy from {final}"
    built: list[PreTrainedModel] = []

    def build(out: Path) -> None:
        model = load(resolved.path, quant_kwargs)
        model.save_pretrained(str(out))
        provenance = {"source": resolved.path, "description": resolved.description, "task": cfg.task,
                      "num_labels": num_labels, "device": device.type, "dtype": str(dtype),
                      "transformers": package_version("transformers"),
                      "bitsandbytes": package_version("bitsandbytes")}
        (out / "fedlora_quantized.json").write_text(json.dumps(provenance, indent=2) + "\n")
        built.append(model)

    path = materialise(parent, final.name, build, f"nf4 copy of {resolved.description}", complete=is_complete)
    if built:
        return built[0], f"nf4 quantized now, saved to {path}"
    model = _load_copy(path, quant_kwargs, load)  # another process built it while we waited
    if model is None:  # it was unreadable too: quantize in memory rather than loop
        return load(resolved.path, quant_kwargs), f"nf4 quantized now (copy in {path} unreadable)"
    return model, f"nf4 copy from {path}"
