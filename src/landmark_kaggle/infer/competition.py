"""The scoring run's own train set: the competition folder's ``train.csv`` and ``train/``, used at predict time.

At scoring time GLR2021 mounts a subset of the training set (about 100k
images, per the 2nd-place write-up) as ``train/`` beside the test images. The
top solutions used it two ways, and so can ``predict``:

- ``inference.index_from=competition|both``: embed every image listed in
  ``train.csv`` with the same models (and TTA) as the test images, into an
  index folder in the run's working folder (chunked and resumable: a second
  ``predict`` in the same session continues where the first stopped), and
  search it alone or beside the bundled index;
- ``inference.restrict_to_competition_train``: predict only landmarks that
  ``train.csv`` lists.

Embedding all of it is not always possible: a commit run mounts the full
training set (1.58M images, hours per model on a T4), and any run has the
9-hour limit. ``build_index`` takes at most ``max_images`` rows, chosen by
``priority_order``: one image of every landmark first, then a second of every
landmark that has one, and so on, so any cut keeps every landmark it can (the
GLR2020 3rd place subsampled a train set of more than 100,001 rows the same
way a commit would meet it). A cut index is a prefix of that order, so a
resumed run continues the one it started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landmark_kaggle.errors import UserError

CHUNK_BATCHES = 16


def train_frame(competition: str | Path):
    """``train.csv`` of the competition folder (ids checked row by row), with each image's path under train/."""
    from landmark_kaggle.data.gld import TRAIN_CSV, load_train_index

    root = Path(competition)
    if not (root / TRAIN_CSV).is_file():
        raise UserError(f"{root}: no {TRAIN_CSV}; the competition folder holds train.csv and train/ "
                        "(give it with --competition, or --kaggle)")
    return load_train_index(root, root / TRAIN_CSV).frame


def landmark_ids(competition: str | Path) -> np.ndarray:
    """The landmarks the competition's train.csv lists (what a restricted predict may answer)."""
    return np.unique(train_frame(competition)["landmark_id"].to_numpy(np.int64))


def priority_order(landmark_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row numbers in the order a cut train set takes them: round r holds the r-th image (in file order) of
    every landmark that has that many, the landmarks of a round in one fixed random order."""
    lids = np.asarray(landmark_ids, np.int64)
    if not len(lids):
        return np.zeros(0, np.int64)
    uniq, inverse = np.unique(lids, return_inverse=True)
    by_landmark = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_landmark], np.arange(len(uniq)))
    rank = np.empty(len(lids), np.int64)
    rank[by_landmark] = np.arange(len(lids)) - np.repeat(starts, np.diff(np.append(starts, len(lids))))
    shuffle = np.random.default_rng(seed).permutation(len(uniq))
    return np.lexsort((np.arange(len(lids)), shuffle[inverse], rank))


def _started(out: Path, ids: np.ndarray, order: np.ndarray) -> int | None:
    """Rows of a store already started at ``out`` when it is a prefix of ``order`` (a cut run to resume)."""
    from landmark_kaggle.data.embstore import IDS, META

    if not (out / META).is_file() or not (out / IDS).is_file():
        return None
    started = np.load(out / IDS).astype(str)
    n = len(started)
    return n if n <= len(order) and np.array_equal(ids[np.sort(order[:n])], started) else None


def build_index(embedder, competition: str | Path, out: str | Path, *, batch_size: int,
                chunk_size: int | None = None, max_images: int | None = None) -> dict:
    """Embed the competition's train.csv (at most ``max_images`` rows, ``priority_order``) into an index folder
    at ``out`` (resumable). The summary says how many rows were listed and how many landmarks were kept.

    A chunk is 16 inference batches (1,024 images at batch 64) unless ``chunk_size`` says otherwise: a kill
    loses at most that much work.
    """
    from landmark_kaggle.data import pipeline
    from landmark_kaggle.infer.embed_index import embed_into_store

    frame = train_frame(competition)
    if not (Path(competition) / "train").is_dir():
        raise UserError(f"{competition}: no train/ folder beside train.csv to embed")
    listed, listed_landmarks = len(frame), int(frame["landmark_id"].nunique())
    if max_images is not None and max_images < listed:
        order = priority_order(frame["landmark_id"].to_numpy(np.int64))
        # A started cut (this session's earlier run) is resumed as it was, whatever the new budget says.
        n = _started(Path(out), frame["id"].to_numpy(str), order) or max(int(max_images), 0)
        frame = frame.iloc[np.sort(order[:n])].reset_index(drop=True)
    if not len(frame):
        return {"rows": 0, "listed": listed, "landmarks": 0, "listed_landmarks": listed_landmarks}
    ids = frame["id"].to_numpy(str)
    files = frame["path"].to_numpy(str)

    def dataset(start, stop):
        return pipeline.image_folder_dataset(ids[start:stop], files[start:stop], embedder.data_cfg)

    summary = embed_into_store(embedder, out, ids, frame["landmark_id"].to_numpy(np.int64), dataset,
                               source=str(Path(competition) / "train"), batch_size=batch_size,
                               chunk_size=chunk_size or CHUNK_BATCHES * batch_size,
                               desc="embed competition train/")
    return {**summary, "listed": listed, "listed_landmarks": listed_landmarks}
