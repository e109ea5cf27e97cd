"""A live progress display of the run for people at a terminal; plain log lines everywhere else.

Flower's simulation prints its own log lines and Ray relays the clients' output to the same
console, so the display is one tqdm bar (rounds done, the round in flight, replies received, the
last round's key metrics) with logging routed through ``tqdm.write``: log lines scroll above the
bar instead of tearing it. ``progress=auto`` shows the bar only when stderr is a terminal, so CI
logs and redirected output keep today's plain lines; ``bar`` and ``log`` force one or the other.
The per-round table lines are logged in both modes: the bar adds to them, it does not replace them.
"""

from __future__ import annotations

import contextlib
import sys
from typing import IO, Any

# Shown after the bar, in this order, when the round's row has them.
_POSTFIX = (("train_loss", "train-loss", "{:.4f}"), ("eval_loss", "eval-loss", "{:.4f}"),
            ("eval_accuracy", "acc", "{:.4f}"), ("eval_gen_rouge_l", "rouge-l", "{:.3f}"))


def wants_bar(mode: str, stream: IO[str] | None = None) -> bool:
    """Whether ``progress=<mode>`` means a live bar on ``stream`` (stderr by default)."""
    if mode == "bar":
        return True
    if mode == "log":
        return False
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressDisplay:
    """Round-level live display; every method is a no-op in log mode.

    Used as a recorder listener (:class:`fedlora.results.recorder.RunRecorder`): it hears of
    each round's start, each accepted client reply and each finished round row.
    """

    def __init__(self, mode: str, num_rounds: int, done: int = 0, stream: IO[str] | None = None):
        self.enabled = wants_bar(mode, stream)
        self.num_rounds = num_rounds
        self._stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        self._redirect: contextlib.AbstractContextManager | None = None
        self._replies = 0
        self._last = ""
        self._done = done

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # disable=False explicitly: the entry points set TQDM_DISABLE=1 for library bars
            self._bar = tqdm(total=self.num_rounds, initial=self._done, unit="round", file=self._stream,
                             disable=False, dynamic_ncols=True, leave=True)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- recorder listener --------------------------------------------------------------------
    def on_round_start(self, server_round: int) -> None:
        self._replies = 0
        if self._bar is not None:
            self._bar.set_description(f"round {server_round}/{self.num_rounds}")
            self._bar.set_postfix_str(self._last, refresh=True)

    def on_client(self, row: dict[str, Any]) -> None:
        self._replies += 1
        if self._bar is not None:
            stage = row.get("stage", "train")
            self._bar.set_postfix_str(f"{stage}: {self._replies} replies | {self._last}".rstrip(" |"))

    def on_round_end(self, row: dict[str, Any]) -> None:
        self._last = postfix(row)
        if self._bar is not None:
            if row.get("round", 0) > 0:
                self._bar.update(1)
            self._bar.set_postfix_str(self._last, refresh=True)


def postfix(row: dict[str, Any]) -> str:
    """The round row's key metrics as one short string (``train-loss=0.6931 eval-loss=...``)."""
    parts = [f"{label}={fmt.format(row[key])}" for key, label, fmt in _POSTFIX
             if isinstance(row.get(key), int | float)]
    return " ".join(parts)
