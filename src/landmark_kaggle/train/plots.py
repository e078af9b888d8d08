"""The poster's training curves as PNGs beside ``history.csv``: LR (Fig. 7), loss (Fig. 8), top-k (Fig. 9)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

TOPK_COLUMNS = ("top1", "top10", "top100", "top1000")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lr(schedule_by_epoch, total_epochs: int, path, done_epochs: int | None = None) -> Path:
    """The whole planned schedule, with the epochs already trained marked."""
    epochs = np.arange(total_epochs)
    lrs = schedule_by_epoch(epochs)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs + 1, lrs, marker="o", ms=3, label="planned")
    if done_epochs:
        ax.plot(epochs[:done_epochs] + 1, lrs[:done_epochs], marker="o", ms=5, lw=0, label="trained")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate by epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend()
    return _save(fig, Path(path))


def plot_loss(history: pd.DataFrame, path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["epoch"], history["loss"], marker="o", ms=3, label="train")
    if "val_loss" in history and history["val_loss"].notna().any():
        ax.plot(history["epoch"], history["val_loss"], marker="o", ms=3, label="validation")
    ax.set(xlabel="epoch", ylabel="ArcFace loss", title="Model loss history")
    ax.legend()
    return _save(fig, Path(path))


def plot_topk(history: pd.DataFrame, path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, col in enumerate(TOPK_COLUMNS):
        colour = f"C{i}"
        if f"val_{col}" in history and history[f"val_{col}"].notna().any():
            ax.plot(history["epoch"], history[f"val_{col}"], marker="o", ms=3, color=colour, label=f"val {col}")
        if col in history:
            ax.plot(history["epoch"], history[col], ls="--", color=colour, alpha=0.6, label=f"train {col}")
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="Top-k categorical accuracy history")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, Path(path))


def plot_history(history: pd.DataFrame, schedule_by_epoch, total_epochs: int, folder) -> list[Path]:
    """All three figures into ``folder``; returns their paths."""
    folder = Path(folder)
    return [
        plot_lr(schedule_by_epoch, total_epochs, folder / "lr.png", done_epochs=len(history)),
        plot_loss(history, folder / "loss.png"),
        plot_topk(history, folder / "topk.png"),
    ]
