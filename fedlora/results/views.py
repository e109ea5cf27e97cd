"""The optional views of a run that listen to its recorder: the live display and TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlora.results.console import ProgressDisplay


def open_views(progress: str, tensorboard: bool, num_rounds: int, out_dir: Path, done: int = 0) -> list[Any]:
    """Start the views a run asked for (``progress``, ``tensorboard`` in the config).

    ``done`` is the round a resumed run continues after: the bar starts there and TensorBoard
    drops events logged after it by the interrupted run. Close each view when the run ends.
    """
    views: list[Any] = []
    display = ProgressDisplay(progress, num_rounds, done=done)
    if display.enabled:
        views.append(display.__enter__())
    if tensorboard:
        from fedlora.results.tensorboard import TensorBoardLogger

        views.append(TensorBoardLogger(Path(out_dir) / "tensorboard", resume_after=done))
    return views


def close_views(views: list[Any]) -> None:
    for view in views:
        view.close()
