"""The one place that knows where data lives: local folders, Kaggle's ``/kaggle/input``, or ``gs://``.

On Kaggle the inputs are read-only under ``/kaggle/input`` and outputs go to
``/kaggle/working``. Both roots can be moved with environment variables so the
kernels run unchanged on a laptop and in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_INPUT_ENV = "LANDMARK_KAGGLE_INPUT"
KAGGLE_WORKING_ENV = "LANDMARK_KAGGLE_WORKING"
COMPETITION = "landmark-recognition-2021"


def kaggle_input_root() -> Path:
    return Path(os.environ.get(KAGGLE_INPUT_ENV, "/kaggle/input"))


def kaggle_working_root() -> Path:
    return Path(os.environ.get(KAGGLE_WORKING_ENV, "/kaggle/working"))


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (Kaggle sets KAGGLE_KERNEL_RUN_TYPE)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def competition_data_dir() -> Path:
    return kaggle_input_root() / COMPETITION


def is_remote(path: str | os.PathLike) -> bool:
    """Paths that only tf.io.gfile can read (Cloud Storage on Kaggle TPUs)."""
    return str(path).startswith(("gs://", "s3://", "hdfs://"))
