"""Decide, before any image is read, which image goes into which shard: the same inputs always give one plan.

The plan is what makes ``write`` resumable and partitionable: outliers are
dropped, labels assigned, each class split into train/validation with a seeded
generator, each split shuffled (so a shard mixes classes) and cut into shards
of about ``shard_mb`` by the input files' sizes; inside a shard records go in
id order, which is the order of the files on disk. Every worker, machine and rerun
computes the same plan from the same folder, so shard ``k`` always holds the
same records and a finished shard never needs rewriting.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.data import gld
from landmark_kaggle.data.records import SPLITS, shard_name
from landmark_kaggle.errors import UserError

OUTLIER_COLUMNS = ["id", "landmark_id", "cluster", "reason"]


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    total: int
    frame: pd.DataFrame  # id, landmark_id, label, path in write order; size: input file bytes
    planned_bytes: int  # estimated_bytes summed over the shard's files

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.total)


@dataclass(frozen=True)
class Plan:
    input_count: int
    removed: pd.DataFrame  # the outliers.csv rows that were dropped
    label_map: pd.DataFrame
    shards: list[ShardPlan]
    fingerprint: str  # sha256 over settings and every (shard, id, label) assignment
    source: Path


def read_outliers(path: str | os.PathLike, train: pd.DataFrame) -> pd.DataFrame:
    """``clean/outliers.csv`` (id,landmark_id,cluster,reason), checked row by row against the train index."""
    path = Path(path)
    # A header alone (or an empty file) means clean found no outliers.
    if path.stat().st_size:
        frame = gld.read_checked_csv(path, OUTLIER_COLUMNS, allow_empty=True)
    else:
        frame = pd.DataFrame(columns=OUTLIER_COLUMNS)
    if frame.empty:
        return frame
    ids = frame["id"].str.strip()
    gld.check_ids(ids, path)
    landmark_ids = gld.parse_landmark_ids(frame["landmark_id"], path)
    known = train.set_index("id")["landmark_id"]
    present = ids.isin(known.index).to_numpy()
    if not present.all():
        pos = int(np.flatnonzero(~present)[0])
        raise gld.GLDError(f"{path}: line {pos + 2}: id {ids.iloc[pos]} is not in the training index "
                           f"({int((~present).sum())} unknown id(s) in all; was it cleaned from another folder?)")
    expected = known.loc[ids].to_numpy()
    wrong = expected != landmark_ids
    if wrong.any():
        pos = int(np.flatnonzero(wrong)[0])
        raise gld.GLDError(f"{path}: line {pos + 2}: id {ids.iloc[pos]} has landmark_id {landmark_ids[pos]} "
                           f"but train.csv says {expected[pos]}")
    return pd.DataFrame({"id": ids.to_numpy(), "landmark_id": landmark_ids,
                         "cluster": frame["cluster"].to_numpy(), "reason": frame["reason"].to_numpy()})


def split_validation(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``round(n·f)`` per class, but never a class's last training image."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 1])
    key = rng.random(len(labels))
    order = np.lexsort((key, labels))
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(labels)) - starts
    counts = np.bincount(labels)[sorted_labels]
    n_val = np.minimum(np.rint(counts * val_fraction).astype(np.int64), counts - 1)
    mask = np.zeros(len(labels), bool)
    mask[order] = rank < n_val
    return mask


def _sizes(paths: list[str]) -> list[int]:
    out = []
    for p in paths:
        try:
            out.append(os.stat(p).st_size)
        except OSError:
            out.append(0)
    return out


def file_sizes(paths: list[str], workers: int = 16, chunk: int = 256) -> np.ndarray:
    """Bytes of each file, 0 where it is missing (it then fails, counted, when its shard is written).

    Threads, because on a cold or network disk each stat waits; chunks of files,
    because a thread hand-off per file costs more than a stat of a cached inode.
    """
    if not paths:
        return np.zeros(0, np.int64)
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.fromiter(chain.from_iterable(pool.map(_sizes, chunks)), np.int64, len(paths))


# Mean bytes per S² pixels of the target square when a photo is resized to long side S = 512 and
# re-encoded at each JPEG quality: the 13 real GLDv2 test photos (489–800 px), OpenCV 4.13's
# libjpeg-turbo. Smaller targets carry more detail per pixel: ×(512/S)^0.2 fits 128–512 px.
_QUALITIES = (50, 60, 70, 75, 80, 85, 90, 95, 98, 100)
_BYTES_PER_PIXEL = (0.069, 0.079, 0.094, 0.103, 0.118, 0.139, 0.174, 0.248, 0.342, 0.471)
# Headroom over that mean: the photos ranged from 0.6x to 1.9x it.
_HEADROOM = 1.25
# A record's framing and features besides the JPEG (ids, label, sizes, format).
RECORD_OVERHEAD = 200


def estimated_bytes(sizes: np.ndarray, image_size: int, quality: int) -> np.ndarray:
    """Planned record bytes of input files of ``sizes`` bytes, from the sizes alone: no file is opened.

    A file comes out as a copy (its own size), or is resized and re-encoded,
    which lands near ``k(quality)·S²`` whatever its input size. Re-encoding at a
    higher quality than the source's can grow a file that barely shrinks, so a
    file counts as its size times ``k(q)/k(75)`` (GLDv2 sources are mostly
    around quality 75–90), capped by the resized size. On 2,000 real photos of
    200–1600 px it gave 1.23–1.39x the written bytes at 256–512 px and quality
    75–100; on inputs that are all copied, up to 4.4x (benchmarks/RESULTS.md).
    ``write --estimate`` measures instead. It sets the shard count and the part
    split, never which record goes where.
    """
    k = float(np.interp(quality, _QUALITIES, _BYTES_PER_PIXEL))
    grow = max(1.0, k / float(np.interp(75, _QUALITIES, _BYTES_PER_PIXEL)))
    resized = _HEADROOM * k * image_size * image_size * (512 / image_size) ** 0.2 + 700  # + the JPEG header
    return (np.minimum(np.asarray(sizes, np.float64) * grow, resized) + RECORD_OVERHEAD).astype(np.int64)


def make_plan(data_dir: str | os.PathLike, *, outliers: str | os.PathLike | None, image_size: int,
              quality: int, shard_mb: float, val_fraction: float, seed: int) -> Plan:
    index = gld.load_train_index(data_dir)
    frame = index.frame
    removed = read_outliers(outliers, frame) if outliers else pd.DataFrame(columns=OUTLIER_COLUMNS)
    # Sorting by id makes the plan independent of the CSV's row order.
    kept = frame[~frame["id"].isin(set(removed["id"]))].sort_values("id", kind="stable").reset_index(drop=True)
    if kept.empty:
        raise gld.GLDError(f"{index.source}: every image is listed as an outlier; nothing to write")
    label_map = gld.make_label_map(kept["landmark_id"])
    kept["label"] = gld.attach_labels(kept, label_map)
    is_val = split_validation(kept["label"].to_numpy(), val_fraction, seed)
    kept["size"] = file_sizes(kept["path"].tolist())
    est = estimated_bytes(kept["size"].to_numpy(), image_size, quality)
    shard_bytes = max(1.0, shard_mb * 1024 * 1024)
    shards: list[ShardPlan] = []
    digest = hashlib.sha256(repr((image_size, quality, shard_mb, val_fraction, seed)).encode())
    for split_no, split in enumerate(SPLITS):
        rows = np.flatnonzero(is_val if split == "validation" else ~is_val)
        if not len(rows):
            continue
        rows = rows[np.random.default_rng([seed, 2, split_no]).permutation(len(rows))]
        total = max(1, int(np.ceil(est[rows].sum() / shard_bytes)))
        total = min(total, len(rows))
        for i, members in enumerate(np.array_split(rows, total)):
            # A shard's members are a random draw; within it, id order (which is path order
            # under train/a/b/c/) reads the input folder in one sweep instead of at random.
            members = np.sort(members)
            sub = kept.iloc[members][["id", "landmark_id", "label", "path", "size"]].reset_index(drop=True)
            shards.append(ShardPlan(split, i, total, sub, int(est[members].sum())))
            digest.update(f"{split}/{i}/{total}:".encode())
            digest.update(("|".join(sub["id"] + ":" + sub["label"].astype(str))).encode())
    return Plan(len(frame), removed, label_map, shards, digest.hexdigest(), index.source)


def check_settings(image_size: int, quality: int, shard_mb: float, val_fraction: float, max_part_gb: float) -> None:
    checks = [(image_size >= 16, f"--image-size {image_size} must be >= 16"),
              (1 <= quality <= 100, f"--quality {quality} must be in 1..100"),
              (shard_mb > 0, f"--shard-mb {shard_mb} must be > 0"),
              (0 <= val_fraction < 1, f"--val-fraction {val_fraction} must be in [0, 1)"),
              (max_part_gb > 0, f"--max-part-gb {max_part_gb} must be > 0")]
    for ok, why in checks:
        if not ok:
            raise UserError(why)
