"""The server's own seconds per round, without the time spent waiting for clients.

A round's wall time (``seconds`` in ``metrics.jsonl``) is mostly the clients training. What the
server itself spends is the strategy's callbacks (``configure_train``, ``aggregate_train``,
``configure_evaluate``, ``aggregate_evaluate``) plus the end-of-round work (central evaluation,
recording): :class:`ServerClock` adds up the wall and this thread's CPU seconds of each timed call.
``grid.send_and_receive`` (pushing the messages and polling for replies) is not timed: it is
waiting for clients. Two clock reads per call: cheap enough to stay on in every run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ServerClock:
    """Accumulated wall (``perf_counter``) and thread CPU (``thread_time``) seconds."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.thread_time() - cpu

    def take(self) -> tuple[float, float]:
        """The (wall, cpu) seconds measured since the last ``take``; starts the next count at zero."""
        out = (self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return out


def timed(method: F) -> F:
    """Time a method of an object that has a ``clock`` (:class:`ServerClock`) attribute."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.clock.measure():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
