"""The resident node worker: keeps base models in memory and runs this node's client tasks.

Flower 1.41 starts a fresh ``flwr-clientapp`` process for every message, so without help every
round pays Python start-up, the torch/transformers/peft imports and a base-model load (for a 7B
model a 14 GB read plus 4-bit quantization) again. Started once beside each SuperNode (one per
GPU), this process does those once: the ClientApp, given ``worker="<socket>"`` in the node config,
only forwards each task here (:mod:`fedlora.deploy.proxy`) and the same caches as a simulation's
Ray workers keep the model, the LoRA wrapper and the tokenized data across rounds.

It serves one task at a time on a Unix socket that only its owner can open (mode 0600 in a 0700
directory, and the peer's uid is checked), refuses tasks from other fedlora code, answers a failed
task with an error reply and keeps serving, frees its models after ``--idle-release-s`` without
tasks, and can be stopped (SIGTERM, Ctrl-C) and restarted at any time::

    python -m fedlora.deploy.worker --socket ~/.fedlora/worker.sock [--gpu 0] [--idle-release-s 900]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from fedlora.deploy.fingerprint import identity, mismatch
from fedlora.deploy.messages import ClientTask, FrameError, receive, reply_header, send

log = logging.getLogger("fedlora.worker")
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes on Linux


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/fedlora/worker.sock`` (a per-user tmpfs), else ``~/.fedlora/worker.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "fedlora" if runtime else Path.home() / ".fedlora"
    return base / "worker.sock"


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # not Linux: the socket's 0600 mode is the only guard
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


class Worker:
    """A task server on one Unix socket; :meth:`serve` runs until SIGTERM/SIGINT."""

    def __init__(self, socket_path: Path, idle_release_s: float = 900.0):
        self.path = Path(socket_path).expanduser().absolute()
        self.idle_release_s = idle_release_s
        self.identity = identity()
        self.stop = False
        self.holding_models = False
        self.tasks = 0
        self.last_task = time.monotonic()

    def bind(self) -> socket.socket:
        """Create the socket (owner-only); a stale socket of a dead worker is replaced, a live one refused."""
        self.check_path()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        server.listen(16)
        server.settimeout(1.0)
        return server

    def check_path(self) -> None:
        """Refuse an unusable ``--socket`` (cheap: runs again before the heavy imports)."""
        if len(str(self.path)) > MAX_SOCKET_PATH:
            raise SystemExit(f"--socket: {self.path} is longer than {MAX_SOCKET_PATH} characters (a Unix "
                             "socket limit); choose a shorter path")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() and not stat.S_ISSOCK(self.path.stat().st_mode):
            raise SystemExit(f"--socket: {self.path} exists and is not a socket; choose another path")
        if self.path.exists():
            try:
                ping(self.path)  # a busy worker answers late: the timeout counts as alive too
            except (ConnectionRefusedError, FileNotFoundError):
                self.path.unlink(missing_ok=True)  # left behind by a worker that was killed
            except (OSError, FrameError):
                pass
            if self.path.exists():
                raise SystemExit(f"--socket: another fedlora worker already listens at {self.path}; stop it "
                                 "first or give this one another --socket")

    def serve(self) -> None:
        """Accept and answer tasks one at a time until asked to stop."""
        self.check_path()  # a wrong --socket fails now, not after a minute of imports
        from fedlora.deploy.tasks import run_task  # heavy imports now, before the socket says "ready"

        self._run_task = run_task
        server = self.bind()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info("fedlora worker ready: pid %d, socket %s, fedlora %s (code %s), idle release after %g s",
                 os.getpid(), self.path, self.identity["fedlora_version"], self.identity["code"],
                 self.idle_release_s)
        try:
            while not self.stop:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    self._maybe_release()
                    continue
                with conn:
                    self._answer(conn)
        finally:
            server.close()
            self.path.unlink(missing_ok=True)
            log.info("fedlora worker %d stopped after %d tasks", os.getpid(), self.tasks)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop:  # asked twice: do not wait for the task
            log.warning("fedlora worker: %s received again, stopping now", name)
            raise KeyboardInterrupt(name)
        log.info("fedlora worker: %s received, stopping after the current task (again to stop now)", name)
        self.stop = True

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(60.0)  # a peer that connects but sends nothing must not block the node
        uid = _peer_uid(conn)
        try:
            header, arrays = receive(conn)
        except (FrameError, OSError, ValueError) as err:
            log.warning("dropped a connection that sent no valid task: %s", err)
            return
        conn.settimeout(None)
        reply: dict[str, Any]
        out_arrays = None
        if uid is not None and uid != os.getuid():
            reply = {"ok": False, "error": f"refused: the task comes from uid {uid}, this worker runs as "
                                           f"uid {os.getuid()}"}
        elif header.get("kind") == "ping":
            reply = {"ok": True, "pid": os.getpid(), "tasks": self.tasks, **self.identity}
        elif reason := mismatch(self.identity, header.get("identity", {})):
            reply = {"ok": False, "error": f"refused: {reason}"}
        else:
            reply, out_arrays = self._run(header, arrays)
        try:
            send(conn, reply, out_arrays)
        except OSError as err:
            log.warning("could not send the reply (the ClientApp went away?): %s", err)

    def _run(self, header: dict[str, Any], arrays: Any) -> tuple[dict[str, Any], Any]:
        task = ClientTask(kind=str(header.get("kind")), configs=header.get("configs", {}), arrays=arrays,
                          node_config=header.get("node_config", {}))
        start = time.perf_counter()
        self.tasks += 1
        try:
            reply = self._run_task(task)
        except Exception as err:  # a failed task is answered; the worker keeps serving
            log.error("task %d (%s) failed: %s\n%s", self.tasks, task.kind, err, traceback.format_exc())
            return {"ok": False, "error": f"{task.kind} failed: {type(err).__name__}: {err}"}, None
        finally:
            self.last_task = time.monotonic()
        self.holding_models = self.holding_models or task.kind != "query"
        log.info("task %d (%s) done in %.2f s", self.tasks, task.kind, time.perf_counter() - start)
        return reply_header(reply), reply.arrays

    def _maybe_release(self) -> None:
        if not self.holding_models or time.monotonic() - self.last_task < self.idle_release_s:
            return
        from fedlora.models.build import release_models

        released = release_models()
        self.holding_models = False
        log.info("idle for %g s: released %d cached model(s) and the GPU memory they held",
                 self.idle_release_s, released)


def ping(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the worker at ``path`` who it is (raises OSError/FrameError if nobody answers)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(Path(path).expanduser()))
        send(sock, {"kind": "ping"})
        header, _ = receive(sock)
        return header


def wait_until_ready(path: Path, alive: Callable[[], bool], seconds: float, log_tail: Callable[[], str]
                     ) -> dict[str, Any]:
    """Ping the worker starting at ``path`` until it answers (its imports are done); return its answer.

    Raises
    ------
    RuntimeError
        If ``alive()`` turns false first (the worker exited), with ``log_tail()``.
    TimeoutError
        If it has not answered within ``seconds``, with ``log_tail()``.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the worker at {path} exited:\n{log_tail()}")
        try:
            return ping(path)
        except (OSError, FrameError):
            time.sleep(0.3)
    raise TimeoutError(f"the worker at {path} did not answer within {seconds:g} s:\n{log_tail()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedlora.deploy.worker",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--socket", type=Path, default=default_socket(),
                        help=f"Unix socket to serve on (default {default_socket()}); the node config's "
                             "worker=\"...\" names the same path")
    parser.add_argument("--gpu", default=None, help="pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--idle-release-s", type=float, default=900.0,
                        help="free cached models (and GPU memory) after this many seconds without a task")
    parser.add_argument("--ping", action="store_true",
                        help="ask a running worker at --socket who it is, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S", stream=sys.stdout,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s")
    if args.ping:
        try:
            print(ping(args.socket))
        except (OSError, FrameError) as err:
            print(f"no fedlora worker answers at {args.socket}: {err}", file=sys.stderr)
            return 1
        return 0
    if args.idle_release_s <= 0:
        parser.error("--idle-release-s: expected a positive number of seconds")
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # before torch is imported
    Worker(args.socket, args.idle_release_s).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
