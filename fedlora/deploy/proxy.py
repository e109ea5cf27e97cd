"""The ClientApp's side of a resident worker: forward one task over the worker's socket.

Imports only the standard library, numpy and :mod:`fedlora.deploy.messages`: it runs in the
short-lived ``flwr-clientapp`` process Flower starts for every message, where importing torch
would cost more than the task. Every failure becomes a ``RuntimeError`` whose message says what
to do; Flower turns it into an error reply, which the server records as a rejected reply with
that reason, and the next round the node is asked again.
"""

from __future__ import annotations

import socket
from pathlib import Path

from fedlora.deploy.fingerprint import identity
from fedlora.deploy.messages import ClientTask, FrameError, TaskReply, receive, send, task_header

CONNECT_TIMEOUT_S = 10.0
START_HINT = "start it on this node with: python -m fedlora.deploy.worker --socket {path}"


class WorkerError(RuntimeError):
    """The worker could not be reached, refused the task, or failed it."""


def _connect(path: str) -> socket.socket:
    sock_path = Path(path).expanduser()
    if not sock_path.exists():
        raise WorkerError(f"no fedlora worker socket at {sock_path}: {START_HINT.format(path=sock_path)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(str(sock_path))
    except OSError as err:
        sock.close()
        raise WorkerError(f"no fedlora worker answers at {sock_path} ({err.strerror or err}); "
                          f"{START_HINT.format(path=sock_path)}") from err
    sock.settimeout(None)  # a training task takes as long as it takes; the server's round timeout bounds it
    return sock


def call_worker(path: str, task: ClientTask) -> TaskReply:
    """Send ``task`` to the worker listening at ``path`` and return its reply.

    Raises
    ------
    WorkerError
        If no worker listens there, it refuses the task (another fedlora version or code), the task
        failed in the worker (its reason is passed on), or the worker died mid-task.
    """
    with _connect(path) as sock:
        try:
            send(sock, {**task_header(task), "identity": identity()}, task.arrays)
            header, arrays = receive(sock)
        except (FrameError, OSError) as err:
            raise WorkerError(f"the fedlora worker at {path} stopped during the {task.kind} task ({err}); "
                              "it may have been killed or run out of memory: see its log, restart it, and "
                              "the node rejoins at the next round") from err
    if not header.get("ok"):
        raise WorkerError(f"fedlora worker at {path}: {header.get('error', 'no reason given')}")
    return TaskReply(configs=header.get("configs", {}), metrics=header.get("metrics", {}), arrays=arrays)
