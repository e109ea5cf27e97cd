"""List and prune the model cache: ``python -m fedlora.models.cache [list|prune] ...``.

The cache (:func:`fedlora.models.sources.cache_dir`) holds what fedlora builds once and reuses:
converted models (``models/``: GGUF dequantised to safetensors, the tiny test models), NF4 copies
(``quantized/``) and shared CPU weights (``shared/``). A new library version, source file or
setting gets a new entry rather than overwriting an old one, so old entries pile up: a shared copy
of a 7B model is 28 GB. Every use touches the entry's ``.last-used`` file, which is what
``prune --unused-days N`` goes by.

Removing an entry that a running process has mapped is safe on Linux and macOS (the pages live
until the last mapping goes); an entry being built is skipped, under the same lock its builder holds.
A temp dir left by a build that was killed (its lock is free) is listed and pruned like an entry;
the next build of the same entry removes it too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from fedlora.models.sources import LAST_USED, TEMP_INFIX, cache_dir

KINDS = ("models", "quantized", "shared")


@dataclass(frozen=True)
class Entry:
    """One cache entry: a directory ``<cache>/<kind>/<name>``."""

    kind: str
    path: Path
    size: int  # bytes
    last_used: float  # epoch seconds (the directory's mtime if it was never marked)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _lock_of(path: Path) -> FileLock:
    """The build lock of an entry, or of the entry that a temp dir was being built into."""
    name = path.name[1:].rsplit(TEMP_INFIX, 1)[0] if path.name.startswith(".") else path.name
    return FileLock(str(path.parent / f"{name}.lock"))


def _abandoned(path: Path) -> bool:
    """A temp dir whose build lock is free: its builder was killed before it could clean up."""
    try:
        with _lock_of(path).acquire(timeout=0):
            return True
    except Timeout:
        return False  # a build in progress


def entries(root: Path | None = None, kinds: Sequence[str] = KINDS) -> list[Entry]:
    """Every finished entry under ``root`` (default: the cache), and every temp dir a killed build
    left behind (possibly gigabytes), oldest use first; a build in progress is not listed."""
    root = cache_dir() if root is None else root
    out = []
    for kind in kinds:
        for path in sorted((root / kind).glob("*")):
            if not path.is_dir():
                continue
            if path.name.startswith(".") and not (TEMP_INFIX in path.name and _abandoned(path)):
                continue
            marker = path / LAST_USED
            used = marker.stat().st_mtime if marker.exists() else path.stat().st_mtime
            out.append(Entry(kind, path, _size(path), used))
    return sorted(out, key=lambda e: e.last_used)


def remove(entry: Entry) -> bool:
    """Delete ``entry`` under its build lock; ``False`` if another process holds the lock."""
    lock = _lock_of(entry.path)
    try:
        with lock.acquire(timeout=0):
            shutil.rmtree(entry.path)
    except Timeout:
        return False
    return True


def _human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _table(items: Sequence[Entry], now: float) -> str:
    lines = [f"{'kind':<10} {'size':>10} {'last used':>12}  path"]
    for e in items:
        days = (now - e.last_used) / 86400
        unfinished = "  (left by a build that did not finish)" if e.path.name.startswith(".") else ""
        lines.append(f"{e.kind:<10} {_human(e.size):>10} {days:>9.1f} d  {e.path}{unfinished}")
    lines.append(f"{_count(len(items))}, {_human(sum(e.size for e in items))}")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedlora.models.cache",
                                     description="List and prune fedlora's model cache.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="show the entries, their sizes and when each was last used (default)")
    prune = sub.add_parser("prune", help="delete entries")
    prune.add_argument("--unused-days", type=float, metavar="N",
                       help="delete entries not used for N days or more")
    prune.add_argument("--all", action="store_true", help="delete every entry of the chosen kinds")
    prune.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    for p in sub.choices.values():
        p.add_argument("--kind", choices=KINDS, action="append", help="only this kind (repeatable)")
    args = parser.parse_args(argv)
    kinds = getattr(args, "kind", None) or list(KINDS)
    root = cache_dir()
    now = time.time()
    if args.command in (None, "list"):
        print(f"fedlora model cache: {root}")
        print(_table(entries(root, kinds), now))
        return 0
    if (args.unused_days is None) == (not args.all):
        parser.error("prune needs exactly one of --unused-days N or --all")
    if args.unused_days is not None and args.unused_days < 0:
        parser.error(f"--unused-days: expected a number >= 0, got {args.unused_days}")
    chosen = [e for e in entries(root, kinds)
              if args.all or now - e.last_used >= args.unused_days * 86400]
    if not chosen:
        print("nothing to delete")
        return 0
    print(_table(chosen, now))
    if args.dry_run:
        print("(dry run: nothing deleted)")
        return 0
    busy = [e for e in chosen if not remove(e)]
    for e in busy:
        print(f"skipped {e.path}: another process is building it", file=sys.stderr)
    gone = [e for e in chosen if e not in busy]
    print(f"deleted {_count(len(gone))}, {_human(sum(e.size for e in gone))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
