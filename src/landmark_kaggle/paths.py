"""The one place that knows where data lives on Kaggle: ``/kaggle/input`` (read-only) and ``/kaggle/working``.

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


def competition_data_dir() -> Path:
    return kaggle_input_root() / COMPETITION
