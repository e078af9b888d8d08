"""The one place that knows where data lives on Kaggle, and finds each input by what it holds.

On Kaggle the inputs are read-only under ``/kaggle/input`` and outputs go to
``/kaggle/working``. Both roots can be moved with environment variables so the
kernels run unchanged on a laptop and in tests.

Where Kaggle mounts an attached source depends on its kind and on the
notebook's age: ``/kaggle/input/<slug>/`` (classic, also a notebook's output),
``/kaggle/input/competitions/<slug>/``, ``/kaggle/input/datasets/<owner>/<slug>/``,
``/kaggle/input/notebooks/<owner>/<slug>/`` and Kaggle Models'
``/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/``
(newer notebooks), older Kaggle Models'
``/kaggle/input/<model>/<framework>/<variation>/<version>/``. A source's own
folders come below that (a build-write part: ``tfrec/<part>/``, a training
checkpoint: ``model/checkpoint/``), so the deepest input sits eight levels
down. Nothing here builds a path from a slug: ``find_inputs`` walks the input
root to depth ``MAX_DEPTH`` and classifies every folder by its content
(``KINDS``). GLDv2's image trees (``train/a/b/c/``: one-character folders
under a split folder, millions of files) are never entered, which keeps the
walk fast at any depth (``benchmarks/find_inputs.py``); ``kernels/prelude.py``
finds the wheel by the same rules before the package is installed.

This module imports nothing outside the standard library and ``errors``: the
kernels' prelude imports it straight from the freshly installed wheel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from landmark_kaggle.errors import UserError

KAGGLE_INPUT_ENV = "LANDMARK_KAGGLE_INPUT"
KAGGLE_WORKING_ENV = "LANDMARK_KAGGLE_WORKING"
COMPETITION = "landmark-recognition-2021"
# models/<owner>/<model>/<framework>/<variation>/<version>/ is six; a source's own sub-folders add two.
MAX_DEPTH = 8

# The file names each kind is recognised by (model.WEIGHTS_FILE, retrieval.INDEX_META, train.CHECKPOINT_DIR /
# STATE_FILE: a test keeps them equal; importing those modules here would pull in TensorFlow).
MODEL_MARKERS = ("config.json", "label_map.csv", "model.weights.h5")
INDEX_MARKER = "index.json"
CHECKPOINT_MARKER = ("checkpoint", "state.json")
# The build kernels' outputs (embstore.META/IDS/MATRIX; clean.py's outliers.csv and report.json).
STORE_MARKERS = ("meta.json", "ids.npy", "matrix.npy")
CLEAN_MARKERS = ("outliers.csv", "report.json")
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras", ".pth", ".pt", ".safetensors")
KINDS = {
    "wheel": "the landmark_kaggle-*.whl package wheel (a file)",
    "model": "a model folder (config.json, label_map.csv, model.weights.h5)",
    "index": "a retrieval index of training images (index.json with landmarks > 0)",
    "distractors": "a non-landmark index (index.json with landmarks == 0)",
    "competition": "the competition data (sample_submission.csv and test/)",
    "shards": "TFRecord shards (label_map.csv and *.tfrec; one folder per part of a build)",
    "weights": "a weights file outside any model folder, e.g. ImageNet backbone weights (a file)",
    "train_output": "a training output folder with a checkpoint (checkpoint/state.json), e.g. a previous version's",
    "embeddings": "an embeddings store from `tfrec-builder embed` (meta.json, ids.npy, matrix.npy)",
    "clean": "the output of `tfrec-builder clean` (outliers.csv and report.json)",
}


def kaggle_input_root() -> Path:
    return Path(os.environ.get(KAGGLE_INPUT_ENV, "/kaggle/input"))


def kaggle_working_root() -> Path:
    return Path(os.environ.get(KAGGLE_WORKING_ENV, "/kaggle/working"))


# GLDv2 keeps its images under these folders as <split>/a/b/c/<id>.jpg.
IMAGE_SPLITS = ("train", "test", "index")


def is_image_tree(parent: str, name: str) -> bool:
    """A first level of GLDv2's ``train/a/b/c/``: never holds an input of ours, and may hold millions of files.

    Only one-character folders under a split folder: a Kaggle Model's version folder (``…/keras/s/1/``) is
    one character too.
    """
    return len(name) == 1 and parent in IMAGE_SPLITS


class Inputs(dict):
    """kind -> sorted paths found under ``root`` (every kind of ``KINDS`` present, maybe empty)."""

    def __init__(self, root: Path, found: dict[str, list[Path]]):
        super().__init__({kind: sorted(found.get(kind, [])) for kind in KINDS})
        self.root = root

    def optional(self, kind: str) -> Path | None:
        """The one input of ``kind``, None when there is none; two or more is an error naming them."""
        paths = self[kind]
        if len(paths) > 1:
            listed = "\n  ".join(map(str, paths))
            raise UserError(f"found {len(paths)} candidates for {KINDS[kind]} under {self.root}, expected one "
                            f"(attach only one, or name it on the command line):\n  {listed}")
        return paths[0] if paths else None

    def one(self, kind: str) -> Path:
        """The one input of ``kind``; none or several is an error that says what was looked for and where."""
        path = self.optional(kind)
        if path is None:
            raise UserError(f"found no {KINDS[kind]} under {self.root} (searched {MAX_DEPTH} folders deep)")
        return path

    def every(self, kind: str) -> list[Path]:
        """Every input of ``kind``, at least one (several parts of one shard build, say)."""
        if not self[kind]:
            raise UserError(f"found no {KINDS[kind]} under {self.root} (searched {MAX_DEPTH} folders deep)")
        return list(self[kind])

    def summary(self) -> str:
        return ", ".join(f"{kind} {len(paths)}" for kind, paths in self.items() if paths) or "nothing"


def _index_kind(meta_path: Path) -> str | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("landmarks"), int):
        return None  # an index.json of something else
    return "index" if meta["landmarks"] > 0 else "distractors"


def classify(folder: Path, dirs: list[str], files: list[str]) -> dict[str, list[Path]]:
    """The inputs one folder holds, by its own files and sub-folder names (nothing below is read)."""
    names = set(files)
    found: dict[str, list[Path]] = {}

    def add(kind: str, path: Path) -> None:
        found.setdefault(kind, []).append(path)

    for name in files:
        if name.startswith("landmark_kaggle-") and name.endswith(".whl"):
            add("wheel", folder / name)
    is_model = all(m in names for m in MODEL_MARKERS)
    if is_model:
        add("model", folder)
    if INDEX_MARKER in names:
        kind = _index_kind(folder / INDEX_MARKER)
        if kind:
            add(kind, folder)
    if "sample_submission.csv" in names and "test" in dirs:
        add("competition", folder)
    if "label_map.csv" in names and any(n.endswith(".tfrec") for n in names):
        add("shards", folder)
    if all(m in names for m in STORE_MARKERS):
        add("embeddings", folder)
    if all(m in names for m in CLEAN_MARKERS):
        add("clean", folder)
    if CHECKPOINT_MARKER[0] in dirs and (folder / CHECKPOINT_MARKER[0] / CHECKPOINT_MARKER[1]).is_file():
        add("train_output", folder)
    if not is_model and folder.name != CHECKPOINT_MARKER[0]:
        for name in files:
            if name.endswith(WEIGHT_SUFFIXES):
                add("weights", folder / name)
    return found


def find_inputs(root: str | os.PathLike | None = None, max_depth: int = MAX_DEPTH) -> Inputs:
    """Walk ``root`` (default: the Kaggle input root) ``max_depth`` folders deep and classify every folder.

    Symbolic links are followed, each real folder once (the first name it is met under, in sorted
    order); GLDv2 image trees are skipped.
    """
    root = Path(root) if root is not None else kaggle_input_root()
    found: dict[str, list[Path]] = {}
    seen: set[str] = set()
    if root.is_dir():
        for top, dirs, files in os.walk(root, followlinks=True):
            folder = Path(top)
            depth = len(folder.relative_to(root).parts)
            # A folder reached a second time through a link (one source mounted under two names, or a loop)
            # is the same input, not a second candidate.
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            for kind, paths in classify(folder, dirs, files).items():
                found.setdefault(kind, []).extend(paths)
            dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if not is_image_tree(folder.name, d))
    return Inputs(root, found)
