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


def build_index(embedder, competition: str | Path, out: str | Path, *, batch_size: int,
                chunk_size: int | None = None) -> dict:
    """Embed every image of the competition's train.csv into an index folder at ``out`` (resumable).

    A chunk is 16 inference batches (1,024 images at batch 64) unless ``chunk_size`` says otherwise: a kill
    loses at most that much work.
    """
    from landmark_kaggle.data import pipeline
    from landmark_kaggle.infer.embed_index import embed_into_store

    frame = train_frame(competition)
    if not (Path(competition) / "train").is_dir():
        raise UserError(f"{competition}: no train/ folder beside train.csv to embed")
    ids = frame["id"].to_numpy(str)
    files = frame["path"].to_numpy(str)

    def dataset(start, stop):
        return pipeline.image_folder_dataset(ids[start:stop], files[start:stop], embedder.data_cfg)

    return embed_into_store(embedder, out, ids, frame["landmark_id"].to_numpy(np.int64), dataset,
                            source=str(Path(competition) / "train"), batch_size=batch_size,
                            chunk_size=chunk_size or CHUNK_BATCHES * batch_size,
                            desc="embed competition train/")
