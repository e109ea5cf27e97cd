"""Which fedlora code a process runs: its version and a hash of its source files.

A resident worker (:mod:`fedlora.deploy.worker`) runs the node's installed fedlora while the
ClientApp runs the code in the app bundle that ``flwr run`` shipped. If the two differ, the
worker would train with different code than the run was started with and nobody would notice;
so the proxy sends this fingerprint with every task and the worker refuses a mismatch. Hashing
~100 small files takes milliseconds and needs no heavy import.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import fedlora


@cache
def code_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) over the relative paths and bytes of fedlora's ``.py`` files."""
    root = Path(fedlora.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def identity() -> dict[str, str]:
    """What a proxy and a worker compare before a task runs."""
    return {"fedlora_version": fedlora.__version__, "code": code_fingerprint(),
            "location": str(Path(fedlora.__file__).resolve().parent)}


def mismatch(mine: dict[str, str], theirs: dict[str, str]) -> str:
    """An explanation when two identities differ, else ``""``."""
    if mine.get("fedlora_version") != theirs.get("fedlora_version"):
        return (f"the worker runs fedlora {mine.get('fedlora_version')} ({mine.get('location')}) but "
                f"the app bundle has fedlora {theirs.get('fedlora_version')}")
    if mine.get("code") != theirs.get("code"):
        return (f"the worker's fedlora code (hash {mine.get('code')}, {mine.get('location')}) differs from "
                f"the app bundle's (hash {theirs.get('code')}, {theirs.get('location')}): restart the worker "
                "from the same checkout as the one passed to `flwr run`")
    return ""
