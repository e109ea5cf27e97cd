"""A Grid that gives up as soon as its run is stopped, so Ctrl-C ends an in-process simulation.

Flower's ``run_simulation`` runs the ServerApp in a non-daemon thread. On Ctrl-C the main thread
stops the Simulation Runtime, but the ServerApp thread keeps waiting in ``send_and_receive`` for
replies that will never come (up to ``federation.round_timeout_s``, an hour by default, then the
next round waits again), and the interpreter cannot exit until that thread ends. Wrapping the Grid
the ServerApp sees in :class:`StoppableGrid` lets :func:`simulations.engine.simulate` set one
event that makes every wait of the server raise :class:`RunStopped` within ``poll_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class RunStopped(RuntimeError):
    """The run was stopped (Ctrl-C) while the server was waiting on its clients."""


class StoppableGrid(Grid):
    """Delegate to ``inner``; raise :class:`RunStopped` from any call once ``stop`` is set."""

    def __init__(self, inner: Grid, stop: threading.Event, poll_s: float = 0.2):
        self.inner, self.stop, self.poll_s = inner, stop, poll_s

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunStopped("run stopped while the server waited for its clients")

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        return self.inner.create_message(*args, **kwargs)  # type: ignore[arg-type]

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        self._check()
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Flower's push-then-poll contract (all replies or ``timeout``), checking ``stop`` while
        polling instead of sleeping through it."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            if self.stop.wait(self.poll_s):
                self._check()
        return replies
