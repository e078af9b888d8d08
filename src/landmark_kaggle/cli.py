"""The ``landmark-kaggle`` command line: one subcommand per pipeline stage.

Each entry maps a subcommand to the module that implements it and a one-line
help; see ``clibase`` for why the modules are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

from landmark_kaggle.clibase import main_for

COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("landmark_kaggle.data.sample", "write the embedded sample dataset in GLDv2 layout"),
    "stats": ("landmark_kaggle.data.stats", "class-size buckets (poster Table 2) and the images-per-class histogram"),
    "train": ("landmark_kaggle.train.command", "train EfficientNetV2-S + ArcFace on TFRecord shards: a model folder"),
    "train-embeddings": ("landmark_kaggle.train.embeddings", "fit cosine classifier + ArcFace on an embeddings store"),
    "predict": ("landmark_kaggle.infer.predict", "submission.csv from model folders, re-ranked by retrieval if asked"),
    "embed-index": ("landmark_kaggle.infer.embed_index", "embed training shards into a retrieval index for predict"),
    "kernels": ("landmark_kaggle.kaggle.command", "the Kaggle loop: bundle, upload, push, status, output, submit"),
    "subset": ("landmark_kaggle.data.subset", "cut a GLDv2 folder to N classes with a held-out, scorable test split"),
    "score": ("landmark_kaggle.evaluate.score", "GAP (public, private, all), top-1 and counts of a submission.csv"),
    "dry-run": ("landmark_kaggle.dryrun", "every stage on a data subset (embedded sample by default), GAP at the end"),
}

DESCRIPTION = """\
Google Landmark Recognition (GLDv2) from raw images to a GAP-scored submission.csv.
Run `landmark-kaggle COMMAND --help` for the options of one command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("landmark-kaggle", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
