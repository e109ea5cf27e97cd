"""The server's own seconds per round: the strategy's callbacks are timed, the wait is not."""

import time

import pytest

from fedlora.strategies.server_clock import ServerClock, timed
from tests.strategies.test_lora_strategy import FakeGrid, _strategy, task_identity  # noqa: F401 (autouse)


class Busy:
    def __init__(self):
        self.clock = ServerClock()

    @timed
    def work(self, seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return "done"

    @timed
    def fail(self):
        raise ValueError("boom")


def test_timed_methods_add_wall_and_cpu_seconds_and_take_starts_a_new_count():
    busy = Busy()
    assert busy.work(0.02) == "done"
    time.sleep(0.05)  # not timed: like waiting for the clients' replies
    busy.work(0.02)
    wall, cpu = busy.clock.take()
    assert 0.04 <= wall < 0.09  # the two calls, not the sleep between them
    assert 0.02 <= cpu <= wall + 0.01  # busy loops: CPU seconds of this thread
    assert busy.clock.take() == (0.0, 0.0)


def test_a_raising_call_is_still_counted():
    busy = Busy()
    with pytest.raises(ValueError):
        busy.fail()
    assert busy.clock.wall > 0


def test_strategy_callbacks_are_timed(tmp_path):
    strategy, _ = _strategy(tmp_path)
    assert strategy.clock.take() == (0.0, 0.0)
    messages = list(strategy.configure_train(1, None, None, FakeGrid([100, 101, 102, 103])))
    assert len(messages) == 4
    wall, cpu = strategy.clock.take()
    assert wall > 0 and cpu > 0
    assert strategy.configure_train.__name__ == "configure_train"  # functools.wraps keeps the name
