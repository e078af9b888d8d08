"""The one place that knows where data lives on Kaggle, and finds each input there by what it holds.

On Kaggle the inputs are read-only under ``/kaggle/input`` and outputs go to
``/kaggle/working``. Both roots can be moved with environment variables so the
kernels run unchanged on a laptop and in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from landmark_kaggle.errors import UserError

KAGGLE_INPUT_ENV = "LANDMARK_KAGGLE_INPUT"
KAGGLE_WORKING_ENV = "LANDMARK_KAGGLE_WORKING"
COMPETITION = "landmark-recognition-2021"


def kaggle_input_root() -> Path:
    return Path(os.environ.get(KAGGLE_INPUT_ENV, "/kaggle/input"))


def kaggle_working_root() -> Path:
    return Path(os.environ.get(KAGGLE_WORKING_ENV, "/kaggle/working"))


def competition_data_dir() -> Path:
    return kaggle_input_root() / COMPETITION


# ---- Inputs found by what they hold -------------------------------------------------------------------------------
# Kaggle mounts a source at /kaggle/input/<slug>/, /kaggle/input/competitions/<slug>/,
# /kaggle/input/datasets/<owner>/<slug>/ or, for a kernel's output, /kaggle/input/<kernel-slug>/…; so nothing
# here builds a path from a slug. The same function name and result type as the finder being written on branch
# `kaggle` (which adds the wheel, model and index kinds); the kinds below are the ones the build kernels need.

MAX_DEPTH = 5
# GLDv2 keeps its images under these folders as <split>/a/b/c/<id>.jpg: never entered.
IMAGE_SPLITS = ("train", "test", "index")
# File names each kind is recognised by (embstore.META/IDS/MATRIX; clean.py's outliers.csv and report.json):
# literal here so this module needs nothing beyond the standard library; tests/test_build_kernels.py keeps
# them equal.
STORE_MARKERS = ("meta.json", "ids.npy", "matrix.npy")
CLEAN_MARKERS = ("outliers.csv", "report.json")
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras", ".pth", ".pt", ".safetensors")
KINDS = {
    "competition": "the competition data (sample_submission.csv and test/)",
    "shards": "TFRecord shards (label_map.csv and *.tfrec; one folder per part of a build)",
    "weights": "a weights file, e.g. ImageNet backbone weights (a file)",
    "embeddings": "an embeddings store from `tfrec-builder embed` (meta.json, ids.npy, matrix.npy)",
    "clean": "the output of `tfrec-builder clean` (outliers.csv and report.json)",
}


def is_image_tree(parent: str, name: str) -> bool:
    """A first level of GLDv2's ``train/a/b/c/``: never holds an input of ours, and may hold millions of files."""
    return len(name) == 1 and parent in IMAGE_SPLITS


class Inputs(dict):
    """kind -> sorted paths found under ``root`` (every kind of ``KINDS`` present, maybe empty)."""

    def __init__(self, root: Path, found: dict[str, list[Path]]):
        super().__init__({kind: sorted(found.get(kind, [])) for kind in KINDS})
        self.root = root

    def optional(self, kind: str) -> Path | None:
        """The one input of ``kind``, None when there is none; two or more is an error naming them."""
        found = self[kind]
        if len(found) > 1:
            listed = "\n  ".join(map(str, found))
            raise UserError(f"found {len(found)} candidates for {KINDS[kind]} under {self.root}, expected one "
                            f"(attach only one, or name it on the command line):\n  {listed}")
        return found[0] if found else None

    def one(self, kind: str) -> Path:
        """The one input of ``kind``; none or several is an error that says what was looked for and where."""
        path = self.optional(kind)
        if path is None:
            raise UserError(f"found no {KINDS[kind]} under {self.root} (searched {MAX_DEPTH} folders deep)")
        return path

    def every(self, kind: str) -> list[Path]:
        """Every input of ``kind``, at least one (the parts of one shard build, say)."""
        if not self[kind]:
            raise UserError(f"found no {KINDS[kind]} under {self.root} (searched {MAX_DEPTH} folders deep)")
        return list(self[kind])


def classify(folder: Path, dirs: list[str], files: list[str]) -> dict[str, list[Path]]:
    """The inputs one folder holds, judged by its own file and sub-folder names."""
    names = set(files)
    found: dict[str, list[Path]] = {}
    if "sample_submission.csv" in names and "test" in dirs:
        found["competition"] = [folder]
    if "label_map.csv" in names and any(n.endswith(".tfrec") for n in names):
        found["shards"] = [folder]
    if all(m in names for m in STORE_MARKERS):
        found["embeddings"] = [folder]
    if all(m in names for m in CLEAN_MARKERS):
        found["clean"] = [folder]
    weights = [folder / n for n in sorted(files) if n.endswith(WEIGHT_SUFFIXES)]
    if weights:
        found["weights"] = weights
    return found


def find_inputs(root: str | os.PathLike | None = None, max_depth: int = MAX_DEPTH) -> Inputs:
    """Walk ``root`` (default: the Kaggle input root) ``max_depth`` folders deep and classify every folder.

    Links are followed, each real folder once; GLDv2 image trees are skipped.
    """
    root = Path(root) if root is not None else kaggle_input_root()
    found: dict[str, list[Path]] = {}
    seen: set[str] = set()
    if root.is_dir():
        for top, dirs, files in os.walk(root, followlinks=True):
            folder = Path(top)
            real = os.path.realpath(folder)
            if real in seen:  # one source reached under two names is one input, not two candidates
                dirs[:] = []
                continue
            seen.add(real)
            for kind, paths in classify(folder, dirs, files).items():
                found.setdefault(kind, []).extend(paths)
            depth = len(folder.relative_to(root).parts)
            dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if not is_image_tree(folder.name, d))
    return Inputs(root, found)
