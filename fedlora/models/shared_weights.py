"""One physical copy of a CPU base model's weights per machine, however many processes use it.

A simulation runs its clients in several Ray worker processes and evaluates in the server process;
a node runs a resident worker beside other jobs. When a checkpoint's safetensors are stored in the
dtype the model computes in, transformers (5.x) already maps them from the file, and the kernel
keeps one copy of those pages for every process that maps them. But whenever the load converts
(a bfloat16 checkpoint computed in float32 on the CPU, the usual case for published LLMs; float32
weights computed in bfloat16; pickled ``.bin`` checkpoints), each process gets a private
(anonymous) copy of every weight: a machine held one copy per process.

The base weights are frozen under LoRA, so they can be read from one file instead. When at least
:data:`MIN_PRIVATE_SHARE` of a loaded model's bytes are private, the first process to load it
saves its tensors, exactly as loaded (dtype, freshly initialised head and all), to
``<cache>/shared/<key>/weights.safetensors``; every process then swaps each tensor's data for a
memory-mapped view of that file (resident memory counts the shared pages in each process,
proportional set size splits them). A model that is already mapped from its checkpoint is left
as it is and costs no copy on disk.

Why this is safe:

* The mapping is private copy-on-write (safetensors' mmap backend): a process that writes to a
  weight (a trained classification head, a user's own code) gets its own copy of those pages;
  the file and the other processes never change.
* Before swapping, every mapped tensor is compared with the one just loaded (``torch.equal``):
  a copy that differs (another library version, a nondeterministic head) is never used; the
  process keeps its own weights and logs why. Results are therefore bit-identical with and
  without sharing.
* The copy is written into a temp dir and renamed under a lock (:func:`materialise`), so no
  process maps a half-written file; a damaged one is rebuilt.

Only CPU weights are shared (``model.share_weights``, default true): on a GPU the weights live in
device memory, where one worker per GPU (``federation.client_num_gpus=1``) is the way to hold one
copy. 4-bit models are left alone (their packed weights and quantization state are not plain
tensors).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from fedlora.config.schema import ModelConfig
from fedlora.memory import release_freed_memory
from fedlora.models.quantized import load_key
from fedlora.models.sources import ResolvedModel, cache_dir, materialise

logger = logging.getLogger(__name__)

KEY_VERSION = 1
"""Bumped when the layout of a shared copy changes, to orphan copies written by older code."""

WEIGHTS = "weights.safetensors"

MIN_PRIVATE_SHARE = 0.1
"""Share a model only when at least this fraction of its bytes is private to the process: a model
mapped from its checkpoint but for a fresh classification head is not worth a copy on disk."""


def shared_key(resolved: ResolvedModel, cfg: ModelConfig, num_labels: int | None, dtype: torch.dtype) -> str:
    """A short hash of everything that changes the loaded weights (16 hex digits)."""
    return load_key(resolved, cfg, num_labels, dtype, KEY_VERSION)


def _tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Every distinct parameter and buffer by its first name (tied weights once)."""
    named = dict(model.named_parameters(remove_duplicate=True))
    for name, buf in model.named_buffers(remove_duplicate=True):
        named.setdefault(name, buf)
    return named


def _is_complete(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def _save(tensors: dict[str, torch.Tensor], out: Path, description: str) -> None:
    seen: set[int] = set()
    plain: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses two entries over one storage (views, aliases) and non-contiguous
        # tensors: those get their own contiguous copy.
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        plain[name] = t
        seen.add(ptr)
    out.mkdir(parents=True, exist_ok=True)
    save_file(plain, str(out / WEIGHTS), metadata={"source": description})


def _mismatch(mine: dict[str, torch.Tensor], mapped: dict[str, torch.Tensor]) -> str | None:
    """Why the mapped copy cannot stand in for the loaded weights, or ``None`` if it can."""
    if set(mine) != set(mapped):
        return f"its tensor names differ ({len(set(mine) ^ set(mapped))} not in both)"
    for name, t in mine.items():
        m = mapped[name]
        if m.dtype != t.dtype or m.shape != t.shape:
            return f"{name} is {m.dtype} {tuple(m.shape)} there, {t.dtype} {tuple(t.shape)} here"
        if not torch.equal(m, t.detach()):
            return f"{name} has other values"
    return None


def share_weights(model: PreTrainedModel, resolved: ResolvedModel, cfg: ModelConfig,
                  num_labels: int | None, dtype: torch.dtype) -> str:
    """Swap a freshly loaded CPU model's tensors for memory-mapped views of its shared copy.

    Parameters
    ----------
    model
        Just loaded with ``from_pretrained`` (under the load seed), on the CPU, not quantized.
    resolved, cfg, num_labels, dtype
        What was loaded: together they name the shared copy (:func:`shared_key`).

    Returns
    -------
    str
        For the load log line: where the weights now live, or why the process kept its own copy.
    """
    mine = _tensors(model)
    if any(t.device.type != "cpu" for t in mine.values()):
        return "weights not shared (not all on the CPU)"
    total = sum(_nbytes(t) for t in mine.values())
    private = total - file_backed_bytes(mine.values())
    if private < MIN_PRIVATE_SHARE * total:
        return "weights mapped from the checkpoint"
    parent = cache_dir() / "shared"
    key = shared_key(resolved, cfg, num_labels, dtype)
    try:
        path = materialise(parent, key, lambda out: _save(mine, out, resolved.description),
                           f"shared CPU copy of {resolved.description}", complete=_is_complete)
        mapped = load_file(str(path / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        logger.warning("could not share the base weights through %s (%s: %s); this process keeps its "
                       "own copy", parent / key, type(exc).__name__, exc)
        return "weights not shared (cache unusable)"
    problem = _mismatch(mine, mapped)
    if problem is not None:
        logger.warning("shared copy %s does not match the weights just loaded (%s); this process keeps its "
                       "own copy (delete that directory to rebuild it)", path, problem)
        return "weights not shared (copy differs)"
    with torch.no_grad():
        for name, t in mine.items():
            t.data = mapped[name]
    release_freed_memory()  # the private copies were freed as each .data was replaced
    return f"weights mapped from {path}"


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
