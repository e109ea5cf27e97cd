"""The server's Grid wrapper: Flower's send-and-receive contract, and a prompt end on stop."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from server.stoppable_grid import RunStopped, StoppableGrid


class FakeGrid:
    """Replies to message ``i`` become available at ``ready[i]`` seconds after the push."""

    def __init__(self, ready: list[float | None]):
        self.ready, self.t0, self.pulls = ready, 0.0, 0

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.t0
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)
                if self.ready[int(i)] is not None and self.ready[int(i)] <= now]


def _ids(replies) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_returns_every_reply_once_all_arrived():
    grid = StoppableGrid(FakeGrid([0.0, 0.05]), threading.Event(), poll_s=0.01)  # type: ignore[arg-type]
    assert _ids(grid.send_and_receive(["a", "b"], timeout=5.0)) == ["0", "1"]


def test_timeout_returns_the_replies_that_came():
    grid = StoppableGrid(FakeGrid([0.0, None]), threading.Event(), poll_s=0.01)  # type: ignore[arg-type]
    assert _ids(grid.send_and_receive(["a", "b"], timeout=0.1)) == ["0"]


def test_stop_ends_a_wait_that_would_last_an_hour():
    stop = threading.Event()
    inner = FakeGrid([None, None])
    grid = StoppableGrid(inner, stop, poll_s=0.01)  # type: ignore[arg-type]
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(RunStopped):
        grid.send_and_receive(["a", "b"], timeout=3600.0)
    assert inner.pulls < 1000  # it waited on the event between polls, not in a busy loop


def test_every_call_refuses_after_stop():
    stop = threading.Event()
    stop.set()
    grid = StoppableGrid(FakeGrid([0.0]), stop)  # type: ignore[arg-type]
    for call in (grid.get_node_ids, lambda: grid.push_messages(["a"]), lambda: grid.pull_messages(["0"])):
        with pytest.raises(RunStopped):
            call()
