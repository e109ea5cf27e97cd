"""Per-round metrics as TensorBoard scalars (``tensorboard=true``), beside the JSONL/CSV files.

The JSONL/CSV files stay the record; TensorBoard is a view for users who already watch their runs
there. Tags group by the row key's first word (``eval_loss`` -> ``eval/loss``, ``train_loss`` ->
``train/loss``, ``bytes_up`` -> ``bytes/up``) with the round as the step. A resumed run purges
events after its resume point, so the curves do not double back over the rounds it repeats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

MISSING = ("tensorboard=true needs the tensorboard package, which is not installed: "
           "pip install tensorboard (or pip install -e '.[tensorboard]'), or set tensorboard=false")


def tensorboard_problem() -> str | None:
    """``None`` when TensorBoard logging can work here, else the one-line fix."""
    return None if importlib.util.find_spec("tensorboard") is not None else MISSING


def tag(key: str) -> str:
    """``eval_loss`` -> ``eval/loss``; keys without an underscore stay as they are."""
    head, sep, rest = key.partition("_")
    return f"{head}/{rest}" if sep and rest else key


class TensorBoardLogger:
    """A recorder listener that writes each finished round's numeric values as scalars."""

    def __init__(self, log_dir: Path, resume_after: int = 0):
        problem = tensorboard_problem()
        if problem:
            raise RuntimeError(problem)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=resume_after + 1 if resume_after else None)

    def on_round_start(self, server_round: int) -> None:
        pass

    def on_client(self, row: dict[str, Any]) -> None:
        pass

    def on_round_end(self, row: dict[str, Any]) -> None:
        step = int(row.get("round", 0))
        for key, value in row.items():
            if key != "round" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(tag(key), float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``log_dir`` as ``{tag: [(step, value), ...]}`` in step order, with the
    events a resumed run purged left out (what TensorBoard itself would plot)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {name: [(e.step, e.value) for e in acc.Scalars(name)] for name in acc.Tags()["scalars"]}
