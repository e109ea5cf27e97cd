"""A PNG of the run's central metrics per round (written next to metrics.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_run(rows: list[dict[str, Any]], path: Path, task: str) -> Path | None:
    """Plot the main eval metric and the train loss against the round; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "eval_accuracy" if task == "classification" else "eval_loss"
    points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
    losses = [(r["round"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if not points and not losses:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, series, label in ((axes[0], points, key.replace("_", " ")), (axes[1], losses, "train loss")):
        if series:
            ax.plot(*zip(*series, strict=True), marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
