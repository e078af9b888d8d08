"""``landmark-kaggle subset``: cut a real GLDv2 download to a small folder in the same layout, with a solution.

The subset keeps ``--classes`` landmarks (chosen at random among those with
enough images), at most ``--max-per-class`` training images each, and a test
split that ``score`` can grade: held-out training images of the kept classes
(their landmark is the answer) plus non-landmark distractors — images of
classes outside the subset, which the model has never seen, as the
competition's test set mixes landmarks with everything else. Files are
hard-linked where the filesystem allows it, copied otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from landmark_kaggle.data import gld
from landmark_kaggle.errors import UserError


def _place(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_subset(data_dir: str | Path, out_dir: str | Path, *, classes: int, max_per_class: int,
                test: int | None = None, distractors: int | None = None, seed: int = 0,
                skip_missing: bool = False) -> dict:
    """Write the subset and return a summary; ``test`` held-out landmark images, ``distractors`` non-landmarks."""
    if classes < 1 or max_per_class < 1:
        raise UserError("--classes and --max-per-class must be >= 1")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; the subset goes into a new or empty one")
    index, missing = gld.drop_missing(gld.load_train_index(data_dir), skip_missing)
    rng = np.random.default_rng(seed)
    frame = index.frame
    sizes = frame.groupby("landmark_id").size()
    test = classes if test is None else test
    # A class must keep at least one training image after giving up its held-out test images.
    need = 1 + int(np.ceil(test / classes))
    eligible = sizes.index[sizes >= need].to_numpy()
    if len(eligible) < classes:
        raise UserError(f"{index.source}: only {len(eligible)} classes have >= {need} images; "
                        f"ask for fewer --classes or fewer --test images")
    chosen = np.sort(rng.choice(eligible, size=classes, replace=False))
    in_subset = frame["landmark_id"].isin(chosen).to_numpy()
    picked = frame[in_subset].sample(frac=1.0, random_state=seed)

    # Held-out test images, spread round-robin over the classes so each one is asked about.
    rank = picked.groupby("landmark_id").cumcount().to_numpy()
    order = np.lexsort((picked["landmark_id"].to_numpy(), rank))
    held = picked.iloc[order[:test]]
    rest = picked.drop(index=held.index)
    train = rest.groupby("landmark_id").head(max_per_class)

    distractors = max(1, test // 2) if distractors is None else distractors
    outside = frame[~in_subset]
    if len(outside) < distractors:
        raise UserError(f"{index.source}: only {len(outside)} images lie outside the chosen classes; "
                        f"ask for fewer --distractors")
    others = outside.sample(n=distractors, random_state=seed) if distractors else outside.iloc[:0]

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, gld.image_path(out, "train", i)) for i, p in zip(train["id"], train["path"], strict=True)]
    test_rows = [(i, str(lid), p) for i, lid, p in zip(held["id"], held["landmark_id"], held["path"], strict=True)]
    test_rows += [(i, "", p) for i, p in zip(others["id"], others["path"], strict=True)]
    jobs += [(p, gld.image_path(out, "test", i)) for i, _, p in test_rows]
    for src, dst in tqdm(jobs, desc="subset", unit="img", leave=False):
        _place(src, dst)

    train[["id", "landmark_id"]].to_csv(out / "train.csv", index=False)
    solution = pd.DataFrame([(i, lm) for i, lm, _ in test_rows], columns=["id", "landmarks"])
    solution = solution.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    solution["Usage"] = np.where(np.arange(len(solution)) % 3 == 0, "Public", "Private")
    solution = solution.sort_values("id")
    solution.to_csv(out / "solution.csv", index=False)
    solution[["id"]].assign(landmarks="").to_csv(out / "sample_submission.csv", index=False)
    return {"classes": int(classes), "train_images": int(len(train)), "test_landmark_images": int(len(held)),
            "test_distractors": int(len(others)), "missing_skipped": len(missing), "out": str(out)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="a GLDv2 folder (train.csv or train_clean.csv, train/a/b/c/<id>.jpg)")
    parser.add_argument("out", help="folder to create")
    parser.add_argument("--classes", type=int, required=True, help="landmarks to keep")
    parser.add_argument("--max-per-class", type=int, required=True, help="training images kept per landmark")
    parser.add_argument("--test", type=int, default=None,
                        help="held-out images of the kept landmarks in the test split (default: one per class)")
    parser.add_argument("--distractors", type=int, default=None,
                        help="non-landmark test images, taken from classes outside the subset (default: test/2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-missing", action="store_true", help="leave out (and count) missing image files")


def run(args: argparse.Namespace) -> int:
    s = make_subset(args.data, args.out, classes=args.classes, max_per_class=args.max_per_class, test=args.test,
                    distractors=args.distractors, seed=args.seed, skip_missing=args.skip_missing)
    print(f"subset: {s['train_images']} train images in {s['classes']} classes, "
          f"{s['test_landmark_images']} held-out + {s['test_distractors']} distractor test images "
          f"({s['missing_skipped']} missing skipped) -> {s['out']}")
    return 0
