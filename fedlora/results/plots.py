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
    # Causal LM with generation on: a third panel with the generation scores.
    gen = {name: [(r["round"], r[k]) for r in rows if r.get(k) is not None]
           for k, name in (("eval_gen_rouge_l", "ROUGE-L"), ("eval_gen_exact_match", "exact match"))}
    panels = [(points, key.replace("_", " ")), (losses, "train loss")]
    fig, axes = plt.subplots(1, 3 if gen["ROUGE-L"] else 2, figsize=(13.5 if gen["ROUGE-L"] else 9, 3.4))
    if gen["ROUGE-L"]:
        for name, series in gen.items():
            if series:
                axes[2].plot(*zip(*series, strict=True), marker="o", label=name)
        axes[2].legend()
        panels.append(([], "generation score"))
    for ax, (series, label) in zip(axes, panels, strict=True):
        if series:
            ax.plot(*zip(*series, strict=True), marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
