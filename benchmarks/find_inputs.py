"""Benchmark: ``paths.find_inputs`` at depth 8 on a Kaggle input tree with 100k GLDv2 images attached.

The tree is the deepest layout Kaggle mounts (``competitions/<slug>/``,
``datasets/<owner>/<slug>/``, ``notebooks/<owner>/<slug>/tfrec/<part>/``,
``models/<owner>/<model>/<framework>/<variation>/<version>/``) with the
competition's ``train/a/b/c/<id>.jpg`` (``--images``, empty files: only the
folder walk is measured) and a ``test/`` tree a tenth of that. Three walks:
``find_inputs`` at depth 8 (image trees pruned, what the kernels run), the
same at the old depth 5, and a bare ``os.walk`` of everything (what a walk
that entered the image trees would at least cost). Prints the times, the
ratios and what was found, so a layout the finder misses shows up here too.

    python benchmarks/find_inputs.py [--images 100000] [--repeat 3]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from landmark_kaggle import paths


def make_tree(root: Path, images: int, seed: int = 0) -> int:
    """A Kaggle input tree with ``images`` train images (+10% test) and one source of each kind; returns files."""
    rng = np.random.default_rng(seed)
    comp = root / "competitions" / paths.COMPETITION
    comp.mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("id,landmarks\n")
    count = 0
    for split, n in (("train", images), ("test", images // 10)):
        for value in rng.integers(0, 2**63, size=n):
            image_id = f"{value:016x}"
            folder = comp / split / image_id[0] / image_id[1] / image_id[2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{image_id}.jpg").touch()
            count += 1
    wheel = root / "datasets" / "alice" / "landmark-kaggle-wheel"
    wheel.mkdir(parents=True)
    (wheel / "landmark_kaggle-0.1.0-py3-none-any.whl").touch()
    for k in (1, 2):
        part = root / "notebooks" / "alice" / f"landmark-kaggle-build-write-part-{k}" / "tfrec" / f"part-{k}"
        part.mkdir(parents=True)
        for name in ("label_map.csv", "train-00000-of-00001.tfrec"):
            (part / name).touch()
    model = root / "models" / "alice" / "landmark-kaggle-model" / "keras" / "default" / "1"
    model.mkdir(parents=True)
    for name in paths.MODEL_MARKERS:
        (model / name).touch()
    return count


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = make_tree(root, args.images)
        print(f"tree: {files:,} images under {paths.COMPETITION}/train|test/a/b/c/ "
              f"({time.perf_counter() - t0:.1f} s to make)")
        deep, found = timed(lambda: paths.find_inputs(root, max_depth=8), args.repeat)
        shallow, found5 = timed(lambda: paths.find_inputs(root, max_depth=5), args.repeat)
        bare, walked = timed(lambda: sum(len(f) for _, _, f in os.walk(root)), args.repeat)
        print(f"find_inputs depth 8 (pruned): {deep * 1000:8.1f} ms  found: {found.summary()}")
        print(f"find_inputs depth 5 (pruned): {shallow * 1000:8.1f} ms  found: {found5.summary()}")
        print(f"os.walk of everything:        {bare * 1000:8.1f} ms  ({walked:,} files)")
        print(f"depth 8 / depth 5: {deep / shallow:.2f}x; depth 8 / full walk: {deep / bare:.4f}x "
              f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
