"""A client task and its reply as plain Python values, and their framing on a local socket.

The ClientApp turns a Flower ``Message`` into a :class:`ClientTask` (config values, numpy arrays,
the node config) and a :class:`TaskReply` back into a ``Message``; in between, the task runs
either in the ClientApp's own process or in the node's resident worker
(:mod:`fedlora.deploy.worker`). Keeping this layer free of Flower, torch and transformers is what
lets the ClientApp be a thin proxy: a fresh ``flwr-clientapp`` process per message then pays only
Python and Flower start-up, never the ML imports or a model load.

A frame is an 8-byte big-endian header length, a UTF-8 JSON header, then the raw bytes of every
array in the order the header lists them. JSON cannot hold ``bytes`` (the run config travels as
YAML bytes), so bytes values are tagged and base64-encoded. No pickle: a frame carries data only.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_BLOB_BYTES = 16 * 1024 * 1024 * 1024
_BYTES_TAG = "__bytes_b64__"

Arrays = dict[str, dict[str, np.ndarray]]  # record name -> array key -> array


@dataclass
class ClientTask:
    """One message for a client: ``kind`` is ``query``, ``train`` or ``evaluate``."""

    kind: str
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=dict)
    node_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskReply:
    """What the client answers: config records (query caps), metric records and array records."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, int | float]] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=dict)


class FrameError(ConnectionError):
    """The peer closed the connection or sent something that is not a frame."""


def _tag(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_tag(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _tag(v) for k, v in value.items()}
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_BYTES_TAG}:
            return base64.b64decode(value[_BYTES_TAG])
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


def encode(header: dict[str, Any], arrays: Arrays | None = None) -> list[bytes | memoryview]:
    """The parts of one frame: length, JSON header (with an array index) and the array bytes."""
    index: list[list[Any]] = []
    blobs: list[memoryview] = []
    for record, items in (arrays or {}).items():
        for key, nd in items.items():
            nd = np.ascontiguousarray(nd)
            index.append([record, key, nd.dtype.str, list(nd.shape), nd.nbytes])
            blobs.append(memoryview(nd).cast("B"))
    body = json.dumps({**_tag(header), "__arrays__": index}).encode()
    return [struct.pack(">Q", len(body)), body, *blobs]


def send(sock: socket.socket, header: dict[str, Any], arrays: Arrays | None = None) -> None:
    """Write one frame."""
    for part in encode(header, arrays):
        sock.sendall(part)


def _read_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise FrameError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def receive(sock: socket.socket) -> tuple[dict[str, Any], Arrays]:
    """Read one frame: the header (bytes values restored) and the arrays by record and key."""
    (size,) = struct.unpack(">Q", bytes(_read_exact(sock, 8)))
    if size > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {size} bytes exceeds {MAX_HEADER_BYTES}: not a fedlora peer?")
    try:
        header = json.loads(bytes(_read_exact(sock, size)))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FrameError(f"frame header is not JSON: {err}") from err
    index = header.pop("__arrays__", [])
    if sum(int(entry[4]) for entry in index) > MAX_BLOB_BYTES:
        raise FrameError("frame arrays are larger than 16 GiB")
    arrays: Arrays = {}
    for record, key, dtype, shape, nbytes in index:
        raw = _read_exact(sock, int(nbytes))
        arrays.setdefault(record, {})[key] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return _untag(header), arrays


def task_header(task: ClientTask) -> dict[str, Any]:
    """The JSON-able part of a task (its arrays travel as blobs)."""
    return {"kind": task.kind, "configs": task.configs, "node_config": task.node_config}


def reply_header(reply: TaskReply) -> dict[str, Any]:
    """The JSON-able part of a reply."""
    return {"ok": True, "configs": reply.configs, "metrics": reply.metrics}
