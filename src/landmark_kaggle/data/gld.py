"""The GLDv2 data layer: read a competition folder into a typed index and a label map.

A GLDv2 folder holds ``train.csv`` (``id,landmark_id``) or ``train_clean.csv``
(``landmark_id,images`` with space-separated ids), images at
``train/a/b/c/<id>.jpg``, ``test/a/b/c/<id>.jpg`` and ``sample_submission.csv``.
Indexing is pure CSV work (vectorised, no per-file ``stat``) so 1.58M rows take
seconds; ``find_missing`` is the separate, optional, parallel existence check.

Every problem in a CSV is reported with the file and the 1-based line number
(line 1 is the header), never as a traceback from inside pandas.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.errors import UserError

ID_PATTERN = r"[0-9a-f]{16}"
TRAIN_CSV = "train.csv"
TRAIN_CLEAN_CSV = "train_clean.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
LABEL_MAP_COLUMNS = ["label", "landmark_id", "count"]
# Poster Table 2: images per class K.
BUCKETS = [("K > 20", 21, None), ("10 < K <= 20", 11, 20), ("5 < K <= 10", 6, 10), ("K <= 5", 1, 5)]


class GLDError(UserError):
    """Bad GLDv2 input; the message names the file and, where there is one, the line."""


def image_path(root: str | os.PathLike, split: str, image_id: str) -> Path:
    """``<root>/<split>/a/b/c/<id>.jpg`` for id ``abc…``."""
    return Path(root) / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


@dataclass(frozen=True)
class GLDIndex:
    """One split of a GLDv2 folder.

    ``frame`` has columns ``id`` (str), ``landmark_id`` (int64), ``label``
    (int64, contiguous 0..C-1 in ascending landmark_id order) and ``path`` (str).
    For the test split ``landmark_id`` and ``label`` are -1.
    """

    root: Path
    split: str
    frame: pd.DataFrame
    label_map: pd.DataFrame
    source: Path

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)


def _line(row_position: int) -> int:
    return int(row_position) + 2  # header is line 1


def _ascii(values: np.ndarray, width: int) -> np.ndarray | None:
    """Fixed-width bytes for fast vectorised checks; None if some value is not ASCII."""
    try:
        return values.astype(f"S{width}")
    except UnicodeEncodeError:
        return None


def hex_id_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is exactly 16 lowercase hex characters (vectorised: 1.58M ids in well under a second)."""
    raw = _ascii(np.asarray(values, dtype=object), 17)
    if raw is None:
        return np.array([isinstance(v, str) and re.fullmatch(ID_PATTERN, v) is not None for v in values], bool)
    m = raw.view(np.uint8).reshape(len(raw), 17)
    body = m[:, :16]
    is_hex = ((body >= ord("0")) & (body <= ord("9"))) | ((body >= ord("a")) & (body <= ord("f")))
    return is_hex.all(axis=1) & (m[:, 16] == 0)


def check_ids(ids: pd.Series, source: Path) -> None:
    bad = ~hex_id_mask(ids.to_numpy())
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise GLDError(
            f"{source}: line {_line(pos)}: id {ids.iloc[pos]!r} is not 16 lowercase hex characters "
            f"({int(bad.sum())} bad id(s) in all)"
        )
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[pos]).to_numpy())[0])
        raise GLDError(
            f"{source}: line {_line(pos)}: duplicate id {ids.iloc[pos]} (first seen on line {_line(first)}; "
            f"{int(dup.sum())} duplicate(s) in all)"
        )


def read_checked_csv(path: Path, columns: list[str], allow_empty: bool = False) -> pd.DataFrame:
    """Read a CSV as text with exactly ``columns``; errors name the file (and line 1 for the header)."""
    if not path.is_file():
        raise GLDError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise GLDError(f"{path}: the CSV is empty (expected header {','.join(columns)})") from None
    except pd.errors.ParserError as exc:
        raise GLDError(f"{path}: cannot parse CSV: {exc}") from None
    got = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in got]
    extra = [c for c in got if c not in columns]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise GLDError(f"{path}: line 1: {'; '.join(parts)} (expected header {','.join(columns)})")
    frame.columns = got
    if frame.empty and not allow_empty:
        raise GLDError(f"{path}: the CSV has a header but no rows")
    return frame[columns]


def parse_landmark_ids(values: pd.Series, source: Path) -> np.ndarray:
    # 19 bytes hold up to 18 digits plus one that must stay empty: a longer value would be cut to
    # fit and pass as a different number, and 18 digits always fit in int64.
    raw = _ascii(values.to_numpy(dtype=object), 19)
    if raw is None:  # non-ASCII text: never a landmark id (and \d would accept other scripts' digits)
        ok = values.str.fullmatch(r"[0-9]{1,18}").to_numpy(bool)
    else:
        ok = np.char.isdigit(raw) & (np.char.str_len(raw) <= 18)
    if not ok.all():
        pos = int(np.flatnonzero(~ok)[0])
        raise GLDError(
            f"{source}: line {_line(pos)}: landmark_id {values.iloc[pos]!r} is not a non-negative integer"
        )
    return raw.astype(np.int64)


def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``train.csv`` → frame(id, landmark_id), validated."""
    path = Path(path)
    frame = read_checked_csv(path, ["id", "landmark_id"])
    check_ids(frame["id"], path)
    return pd.DataFrame({"id": frame["id"].to_numpy(), "landmark_id": parse_landmark_ids(frame["landmark_id"], path)})


def read_train_clean_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``train_clean.csv`` (``landmark_id,images``) → frame(id, landmark_id), one row per image."""
    path = Path(path)
    frame = read_checked_csv(path, ["landmark_id", "images"])
    landmark_ids = parse_landmark_ids(frame["landmark_id"], path)
    lists = frame["images"].str.split()
    empty = (lists.str.len() == 0).to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise GLDError(f"{path}: line {_line(pos)}: landmark {landmark_ids[pos]} lists no images")
    counts = lists.str.len().to_numpy()
    ids = pd.Series(np.concatenate(lists.to_numpy()), dtype=object)
    rows = np.repeat(np.arange(len(frame)), counts)
    bad = ~hex_id_mask(ids.to_numpy())
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise GLDError(f"{path}: line {_line(rows[pos])}: id {ids.iloc[pos]!r} is not 16 lowercase hex characters")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise GLDError(f"{path}: line {_line(rows[pos])}: duplicate id {ids.iloc[pos]}")
    return pd.DataFrame({"id": ids.to_numpy(), "landmark_id": np.repeat(landmark_ids, counts)})


def make_label_map(landmark_ids: np.ndarray | pd.Series) -> pd.DataFrame:
    """label,landmark_id,count with labels contiguous in ascending landmark_id order."""
    uniq, counts = np.unique(np.asarray(landmark_ids, dtype=np.int64), return_counts=True)
    return pd.DataFrame({"label": np.arange(len(uniq), dtype=np.int64), "landmark_id": uniq, "count": counts})


def write_label_map(label_map: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    label_map[LABEL_MAP_COLUMNS].to_csv(path, index=False)
    return path


def read_label_map(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check ``label_map.csv``: labels must be exactly 0..C-1 and landmark ids ascending."""
    path = Path(path)
    frame = read_checked_csv(path, LABEL_MAP_COLUMNS)
    out = pd.DataFrame({c: parse_landmark_ids(frame[c], path) for c in LABEL_MAP_COLUMNS})
    wrong = np.flatnonzero(out["label"].to_numpy() != np.arange(len(out)))
    if len(wrong):
        raise GLDError(f"{path}: line {_line(wrong[0])}: labels must be 0..C-1 in order")
    if not np.all(np.diff(out["landmark_id"].to_numpy()) > 0):
        pos = int(np.flatnonzero(np.diff(out["landmark_id"].to_numpy()) <= 0)[0]) + 1
        raise GLDError(f"{path}: line {_line(pos)}: landmark_id must be strictly ascending")
    return out


def attach_labels(frame: pd.DataFrame, label_map: pd.DataFrame) -> np.ndarray:
    """Labels for ``frame.landmark_id`` under ``label_map``; unknown landmarks raise."""
    lm = label_map["landmark_id"].to_numpy()
    pos = np.searchsorted(lm, frame["landmark_id"].to_numpy())
    pos_clipped = np.minimum(pos, len(lm) - 1)
    unknown = lm[pos_clipped] != frame["landmark_id"].to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise GLDError(f"landmark_id {frame['landmark_id'].iloc[i]} (image {frame['id'].iloc[i]}) "
                       "is not in the label map")
    return label_map["label"].to_numpy()[pos_clipped]


def _paths(root: Path, split: str, ids: pd.Series) -> np.ndarray:
    prefix, sep = f"{root}{os.sep}{split}{os.sep}", os.sep
    # A comprehension beats pandas' string accessor here by about 10x at 1.58M rows.
    return np.array([f"{prefix}{i[0]}{sep}{i[1]}{sep}{i[2]}{sep}{i}.jpg" for i in ids], dtype=object)


def find_train_csv(root: str | os.PathLike) -> Path:
    root = Path(root)
    for name in (TRAIN_CSV, TRAIN_CLEAN_CSV):
        if (root / name).is_file():
            return root / name
    if not root.is_dir():
        raise GLDError(f"{root}: data folder not found")
    raise GLDError(f"{root}: no {TRAIN_CSV} or {TRAIN_CLEAN_CSV} (is this a GLDv2 folder?)")


def load_train_index(root: str | os.PathLike, csv: str | os.PathLike | None = None) -> GLDIndex:
    """Index the training split of a GLDv2 folder (``train.csv`` preferred over ``train_clean.csv``)."""
    root = Path(root)
    source = Path(csv) if csv else find_train_csv(root)
    if source.name == TRAIN_CLEAN_CSV:
        frame = read_train_clean_csv(source)
    else:
        frame = read_train_csv(source)
    label_map = make_label_map(frame["landmark_id"])
    frame["label"] = attach_labels(frame, label_map)
    frame["path"] = _paths(root, "train", frame["id"])
    return GLDIndex(root=root, split="train", frame=frame, label_map=label_map, source=source)


def load_test_index(root: str | os.PathLike) -> GLDIndex:
    """Index the test split: ids from ``sample_submission.csv``, or from the ``test/`` tree if absent."""
    root = Path(root)
    source = root / SAMPLE_SUBMISSION_CSV
    if source.is_file():
        frame = read_checked_csv(source, ["id", "landmarks"])
        ids = frame["id"]
        check_ids(ids, source)
    else:
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise GLDError(f"{root}: neither {SAMPLE_SUBMISSION_CSV} nor a test/ folder")
        ids = pd.Series(sorted(p.stem for p in test_dir.glob("*/*/*/*.jpg")), dtype=object)
        if ids.empty:
            raise GLDError(f"{test_dir}: no images at test/a/b/c/<id>.jpg")
        source = test_dir
        check_ids(ids, source)
    out = pd.DataFrame({"id": ids.to_numpy(), "landmark_id": -1, "label": -1})
    out["path"] = _paths(root, "test", out["id"])
    return GLDIndex(root=root, split="test", frame=out, label_map=make_label_map([]), source=source)


def find_missing(index: GLDIndex, workers: int = 16) -> list[str]:
    """Ids whose image file does not exist. Threads, because the work is I/O (stat) bound."""
    paths = index.frame["path"].tolist()
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        exists = list(pool.map(os.path.isfile, paths, chunksize=max(1, len(paths) // (workers * 8) or 1)))
    return index.frame["id"][~np.asarray(exists)].tolist()


def drop_missing(index: GLDIndex, skip_missing: bool, workers: int = 16, show: int = 5) -> tuple[GLDIndex, list[str]]:
    """Check files exist; raise with a count and the first ids, or (``skip_missing``) drop and return them.

    Labels are kept as they were: dropping files never renumbers classes.
    """
    missing = find_missing(index, workers)
    if not missing:
        return index, []
    head = ", ".join(missing[:show]) + (" …" if len(missing) > show else "")
    if not skip_missing:
        raise GLDError(
            f"{index.root}: {len(missing)} of {len(index)} {index.split} image file(s) are missing "
            f"(first: {head}); pass --skip-missing to go on without them"
        )
    keep = ~index.frame["id"].isin(set(missing))
    frame = index.frame[keep.to_numpy()].reset_index(drop=True)
    return GLDIndex(index.root, index.split, frame, index.label_map, index.source), missing


def class_buckets(counts: np.ndarray) -> dict[str, int]:
    """Number of classes in each of the poster's Table 2 buckets."""
    counts = np.asarray(counts)
    out = {}
    for name, lo, hi in BUCKETS:
        sel = counts >= lo if hi is None else (counts >= lo) & (counts <= hi)
        out[name] = int(sel.sum())
    return out


def bucket_of(count: int) -> str:
    for name, lo, hi in BUCKETS:
        if count >= lo and (hi is None or count <= hi):
            return name
    raise ValueError(f"class size {count} < 1")
