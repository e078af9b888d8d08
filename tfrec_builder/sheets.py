"""Contact sheets of the cleaning, as the poster shows them: kept images on top, removed images below.

One PNG per sampled class, ``sheets/<landmark_id>.png``: the first row is the
kept (main) cluster, the second row the images DBSCAN removed, each titled
with its id and reason. An image that cannot be read is drawn as a grey tile
marked "unreadable" rather than stopping the job.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

TILE = 128


def _tile(path: str) -> tuple[np.ndarray, bool]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return np.full((TILE, TILE, 3), 160, np.uint8), False
    h, w = image.shape[:2]
    scale = TILE / max(h, w)
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.full((TILE, TILE, 3), 255, np.uint8)
    y, x = (TILE - image.shape[0]) // 2, (TILE - image.shape[1]) // 2
    canvas[y:y + image.shape[0], x:x + image.shape[1]] = image[..., ::-1]
    return canvas, True


def draw_sheet(kept: pd.DataFrame, removed: pd.DataFrame, title: str, path: Path, per_row: int = 8) -> Path:
    """Two rows of up to ``per_row`` tiles; frames need columns ``id`` and ``path`` (removed also ``reason``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(per_row, max(len(kept), len(removed))))
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.8), squeeze=False)
    for r, (frame, label) in enumerate([(kept, "kept"), (removed, "removed")]):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(frame):
                ax.axis("off")
                continue
            row = frame.iloc[c]
            tile, ok = _tile(row["path"])
            ax.imshow(tile)
            note = row.get("reason", label) if ok else "unreadable"
            ax.set_title(f"{row['id'][:8]}\n{note}", fontsize=6)
        axes[r][0].set_ylabel(f"{label} ({len(frame)})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_contact_sheets(frame: pd.DataFrame, outliers: pd.DataFrame, out_dir: str | Path, *, count: int = 8,
                         seed: int = 0, per_row: int = 8) -> list[Path]:
    """Sheets for ``count`` classes sampled (by ``seed``) among those that lost images."""
    out_dir = Path(out_dir)
    touched = np.sort(outliers["landmark_id"].unique())
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(touched, size=min(count, len(touched)), replace=False))
    removed_ids = set(outliers["id"])
    paths = []
    for lid in chosen:
        members = frame[frame["landmark_id"] == lid]
        kept = members[~members["id"].isin(removed_ids)].head(per_row)
        gone = members.merge(outliers[outliers["landmark_id"] == lid][["id", "reason"]], on="id").head(per_row)
        title = (f"landmark {lid}: kept {int((~members['id'].isin(removed_ids)).sum())}, "
                 f"removed {int(members['id'].isin(removed_ids).sum())}")
        paths.append(draw_sheet(kept, gone, title, out_dir / f"{lid}.png", per_row))
    return paths
