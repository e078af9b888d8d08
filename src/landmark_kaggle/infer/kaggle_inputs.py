"""``predict --kaggle``: what the command line left out, found among Kaggle's inputs by what they hold.

Every model folder (several distinct ones are an ensemble; the same weights attached twice count once),
the index and distractors, the competition's folder (test images, ``sample_submission.csv``,
``train.csv``, ``train/``) and ``submission.csv`` in the working root. A value given on the command
line is never replaced. Where Kaggle mounts things is ``landmark_kaggle.paths``'s business.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from landmark_kaggle import paths


def kaggle_inputs(args: argparse.Namespace) -> None:
    """Fill what the command line left out from the Kaggle roots; a value the user gave is never replaced.

    Inputs are found by what they hold (``paths.find_inputs``), in any layout Kaggle mounts them.
    """
    found = paths.find_inputs()
    if args.model is None:
        args.model = distinct_models(found.every("model"))
    if args.index is None:
        args.index = found.optional("index")
    if args.distractors is None:
        args.distractors = found.optional("distractors")
    comp = None
    if args.images is None and args.tfrec is None:
        comp = found.one("competition")
        args.images = comp / "test"
        # The competition's id list goes with the competition's images only, never with images named by hand.
        if args.ids is None and (comp / "sample_submission.csv").is_file():
            args.ids = comp / "sample_submission.csv"
    if args.competition is None:
        args.competition = comp or found.optional("competition")
    if args.out is None:
        args.out = paths.kaggle_working_root() / "submission.csv"


def distinct_models(folders: list[Path]) -> list[Path]:
    """Model folders in path order, each set of weights once: several distinct ones are an ensemble.

    A model attached twice (as a dataset and as the training output it came
    from) has the same weights file; predicting with it twice would only
    double the work, so the first copy stands for both.
    """
    from landmark_kaggle.fileio import file_sha256
    from landmark_kaggle.model.network import WEIGHTS_FILE

    seen: dict[str, Path] = {}
    for folder in folders:
        seen.setdefault(file_sha256(Path(folder) / WEIGHTS_FILE), Path(folder))
    kept = list(seen.values())
    if len(kept) < len(folders):
        print(f"model folders: {len(folders)} attached, {len(kept)} distinct (same weights counted once)")
    return kept
