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


def lr_curve(schedule_by_epoch, total_epochs: int, points_per_epoch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(epoch positions, rates) across the whole run, sampled within epochs: the warm-up ramp and the decay
    change the rate step by step, not at epoch boundaries."""
    x = np.arange(total_epochs * points_per_epoch) / points_per_epoch
    return x, np.asarray(schedule_by_epoch(x), dtype=np.float64)


def plot_lr(schedule_by_epoch, total_epochs: int, path, done_epochs: int | None = None) -> Path:
    """The whole planned schedule by step (x in epochs), with the part already trained drawn over it."""
    x, lrs = lr_curve(schedule_by_epoch, total_epochs)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, lrs, lw=1.2, label="planned")
    if done_epochs:
        done = x < done_epochs
        ax.plot(x[done], lrs[done], lw=3, alpha=0.6, label="trained")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate by step", xlim=(0, total_epochs))
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
