"""One physical copy of a CPU base model's weights per machine, however many processes use it.

A simulation runs its clients in several Ray worker processes and evaluates in the server process;
a node runs a resident worker beside other jobs. When a checkpoint's safetensors are stored in the
dtype the model computes in, transformers (5.x) already maps them from the file, and the kernel
keeps one copy of those pages for every process that maps them. But whenever the load converts
(a bfloat16 checkpoint computed in float32 on the CPU, the usual case for published LLMs; float32
weights computed in bfloat16; pickled ``.bin`` checkpoints), each process gets a private
(anonymous) copy of every weight: a machine held one copy per process.

The base weights are frozen under LoRA, so they can be read from one file instead. The first
process to load a model (under a lock, :func:`load_shared`) loads it as usual; when at least
:data:`MIN_PRIVATE_SHARE` of its bytes are private it saves the model, exactly as loaded (dtype,
freshly initialised head and all), with ``save_pretrained`` to ``<cache>/shared/<key>/``, reloads
that directory and checks it, then drops its private copy. Every process, that one included, then
loads the model *from that directory*, where the weights are already in the compute dtype, so
transformers maps them: no process but the first ever holds a private copy, and never two at once
(the others wait for the lock instead of loading beside it, which is what kept a simulation's
peak at one private copy per process while the workers loaded together). A model that is already
mapped from its checkpoint is recorded as such (a marker, no copy on disk) and loaded as it is.

Why this is safe:

* The mapping is private copy-on-write (safetensors' mmap backend): a process that writes to a
  weight (a trained classification head, a user's own code) gets its own copy of those pages;
  the file and the other processes never change.
* Before the copy is published, the model reloaded from it is compared with the one just loaded:
  every tensor (names, dtypes, shapes and a SHA-256 of the bytes, taken before the private load
  was dropped) and the config. A copy that differs (a
  model whose save and load do not round-trip) is never published; a marker says why and every
  process loads privately, as without sharing. Results are therefore bit-identical with and
  without sharing.
* The key (:func:`shared_key`) hashes the source files (sizes, mtimes), the dtype, head size and
  the transformers and torch versions: a process that would load anything else gets another
  entry. The verified copy's size and mtime are recorded, and a copy changed since is rebuilt.
* The copy is written into a temp dir and renamed under a lock (:func:`materialise`), so no
  process maps a half-written file; a damaged one is rebuilt.

Only CPU weights are shared (``model.share_weights``, default true): on a GPU the weights live in
device memory, where one worker per GPU (``federation.client_num_gpus=1``, the default ``-1`` on
a CUDA machine) is the way to hold one copy. 4-bit models are left alone (their packed weights and
quantization state are not plain tensors).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from fedlora.config.schema import ModelConfig
from fedlora.memory import release_freed_memory
from fedlora.models.quantized import load_key
from fedlora.models.sources import ResolvedModel, cache_dir, materialise

logger = logging.getLogger(__name__)

KEY_VERSION = 2
"""Bumped when the layout of a shared copy changes, to orphan copies written by older code
(1: a bare ``weights.safetensors`` that each process compared with its own load)."""

VERIFIED = "fedlora-shared.json"
"""In a published copy: what was checked, and each weight file's size and mtime at that time."""

NOT_SHARED = "fedlora-not-shared.json"
"""In an entry without a copy: why this model loads on its own in every process."""

MIN_PRIVATE_SHARE = 0.1
"""Share a model only when at least this fraction of its bytes is private to the process: a model
mapped from its checkpoint but for a fresh classification head is not worth a copy on disk."""

MAPPED_FROM_CHECKPOINT = "weights mapped from the checkpoint"

Loader = Callable[[str], PreTrainedModel]
"""``from_pretrained`` of a directory with the run's kwargs (dtype, head size, load seed)."""


def shared_key(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, dtype: torch.dtype) -> str:
    """A short hash of everything that changes the loaded weights (16 hex digits)."""
    return load_key(resolved, cfg, num_labels, dtype, KEY_VERSION)


def _tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Every distinct parameter and buffer by its first name (tied weights once)."""
    named = dict(model.named_parameters(remove_duplicate=True))
    for name, buf in model.named_buffers(remove_duplicate=True):
        named.setdefault(name, buf)
    return named


def _weight_files(path: Path) -> dict[str, list[int]]:
    stats = {f.name: f.stat() for f in sorted(path.glob("*.safetensors"))}
    return {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}


def _is_complete(path: Path) -> bool:
    """A published copy whose weight files are as verified, or a marker saying there is none."""
    if (path / NOT_SHARED).is_file():
        return True
    try:
        verified = json.loads((path / VERIFIED).read_text())
        return bool(verified["files"]) and _weight_files(path) == verified["files"]
    except (OSError, ValueError, KeyError):
        return False


def _digest(t: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    """``(dtype, shape, sha256 of the bytes)``: compares two loads without holding both at once."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()  # a view: nothing is copied
    return str(t.dtype), tuple(t.shape), hashlib.sha256(raw).hexdigest()


def _mismatch(mine: dict[str, tuple], other: dict[str, tuple]) -> str | None:
    """Why the digests ``other`` cannot stand in for the loaded weights' ``mine``, or ``None``."""
    if set(mine) != set(other):
        return f"its tensor names differ ({len(set(mine) ^ set(other))} not in both)"
    for name, (dtype, shape, digest) in mine.items():
        o_dtype, o_shape, o_digest = other[name]
        if (o_dtype, o_shape) != (dtype, shape):
            return f"{name} is {o_dtype} {o_shape} there, {dtype} {shape} here"
        if o_digest != digest:
            return f"{name} has other values"
    return None


def _config_mismatch(mine: dict[str, Any], other: dict[str, Any]) -> str | None:
    keys = sorted(k for k in set(mine) | set(other) if k != "_name_or_path" and mine.get(k) != other.get(k))
    return f"its config differs in {keys[:5]}" if keys else None


def _mapped_share(model: PreTrainedModel) -> float:
    tensors = list(_tensors(model).values())
    total = sum(_nbytes(t) for t in tensors)
    return file_backed_bytes(tensors) / total if total else 1.0


class _SourceLoadError(Exception):
    """Carries (as its cause) an error of the model's own load out of the cache's build step."""


def _publish(source: str, out: Path, load: Loader,
             description: str) -> tuple[str | None, PreTrainedModel | None]:
    """Load ``source`` and write it to ``out`` as a shared copy, checked; return ``(why not, model)``.

    ``why not`` is ``None`` when the copy was published; the model is returned only when it stays
    this process's own (nothing to share). Either way ``out`` ends up complete
    (:func:`_is_complete`): the copy with its check record, or only a marker with the reason, so
    no other process tries again. The private load is dropped before the copy is read back, and the
    two are compared by digests, so the machine never holds two copies of the weights at once.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = load(source)
    except Exception as exc:  # the model's own error, not the cache's: load_shared re-raises it
        raise _SourceLoadError from exc
    mine = _tensors(model)  # on the CPU: callers share only CPU loads, and from_pretrained loads there
    if 1.0 - _mapped_share(model) < MIN_PRIVATE_SHARE:
        reason, kept = MAPPED_FROM_CHECKPOINT, model
    else:
        digests = {name: _digest(t) for name, t in mine.items()}
        config = model.config.to_dict()
        model.save_pretrained(str(out))
        del mine, model
        release_freed_memory()
        try:
            copy = load(str(out))
        except Exception as exc:  # any failure to read our own copy back means: do not share it
            problem = f"it does not load ({type(exc).__name__}: {exc})"
        else:
            problem = (_mismatch(digests, {n: _digest(t) for n, t in _tensors(copy).items()})
                       or _config_mismatch(config, copy.config.to_dict())
                       or (None if _mapped_share(copy) >= 1.0 - MIN_PRIVATE_SHARE
                           else "transformers does not map it (it converts on load)"))
            del copy
        if problem is None:
            verified = {"source": description, "tensors": len(digests), "files": _weight_files(out)}
            (out / VERIFIED).write_text(json.dumps(verified, indent=2))
            return None, None
        logger.warning("the shared copy of %s was not published: %s; every process keeps its own copy",
                       description, problem)
        for f in out.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        reason, kept = f"weights not shared (the saved copy {problem})", None
    (out / NOT_SHARED).write_text(json.dumps({"source": description, "reason": reason}, indent=2))
    return reason, kept


def load_shared(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, dtype: torch.dtype,
                load: Loader) -> tuple[PreTrainedModel, str]:
    """Load a CPU model from its shared copy, publishing the copy first if no process has yet.

    Parameters
    ----------
    resolved, cfg, num_labels, dtype
        What is loaded: together they name the shared copy (:func:`shared_key`).
    load
        ``from_pretrained`` of a directory with the run's kwargs (dtype, head size, load seed).

    Returns
    -------
    tuple[PreTrainedModel, str]
        The model, and for the load log line where its weights live (or why they are private).
    """
    parent = cache_dir() / "shared"
    key = shared_key(resolved, cfg, num_labels, dtype)
    box: dict[str, Any] = {}

    def build(out: Path) -> None:  # under the entry's lock: the other processes wait, not load
        box["reason"], box["model"] = _publish(resolved.path, out, load, resolved.description)

    try:
        path = materialise(parent, key, build, f"shared CPU copy of {resolved.description}",
                           complete=_is_complete)
    except _SourceLoadError as exc:
        raise exc.__cause__ from None  # e.g. a missing file: say that, not a word about the cache
    except OSError as exc:
        logger.warning("could not share the base weights through %s (%s: %s); this process keeps its "
                       "own copy", parent / key, type(exc).__name__, exc)
        return _own(box, load, resolved.path), "weights not shared (cache unusable)"
    marker = path / NOT_SHARED
    if marker.is_file():
        reason = box.get("reason") or json.loads(marker.read_text()).get("reason", "weights not shared")
        return _own(box, load, resolved.path), reason
    model = load(str(path))
    model.config.name_or_path = model.name_or_path = resolved.path  # what PEFT writes as the base
    return model, f"weights mapped from {path}"


def _own(box: dict[str, Any], load: Loader, source: str) -> PreTrainedModel:
    """The private model the builder kept, or a private load of ``source``."""
    model = box.get("model")
    return model if model is not None else load(source)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _file_mappings(only: str | None = None) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` address ranges of this process's mappings of regular files (Linux),
    or of the file ``only`` alone."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(maxsplit=5)  # the path (field 6) may hold spaces
        if len(fields) < 6:
            continue
        name = fields[5]
        regular = name.startswith("/") and not name.startswith("/dev/")
        if name == only if only is not None else regular:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            out.append((lo, hi))
    return sorted(out)


def file_backed_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """How many of the tensors' bytes lie in file mappings (0 where ``/proc/self/maps`` is missing)."""
    ranges = _file_mappings()
    starts = [lo for lo, _ in ranges]
    total = 0
    for t in tensors:
        ptr, size = t.data_ptr(), _nbytes(t)
        i = bisect.bisect_right(starts, ptr) - 1
        if size and i >= 0 and ptr + size <= ranges[i][1]:
            total += size
    return total


def is_shared(t: torch.Tensor, path: Path) -> bool:
    """Whether ``t``'s bytes lie inside a memory mapping of ``path`` (Linux ``/proc/self/maps``).

    For tests and diagnostics: a weight that was written to since (copy-on-write) still reads as
    mapped, since the mapping's address range is unchanged.
    """
    ptr = t.untyped_storage().data_ptr()
    return any(lo <= ptr < hi for lo, hi in _file_mappings(only=str(path.resolve())))
