"""The ``tfrec-builder`` command line: embed, clean, write and verify GLDv2 TFRecords."""

from __future__ import annotations

from collections.abc import Sequence

from landmark_kaggle.clibase import main_for

COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("tfrec_builder.embed", "embed every training image with a backbone into a resumable embeddings store"),
    "similarity": ("tfrec_builder.similarity", "pairwise cosine similarity of images under one or more backends"),
    "clean": ("tfrec_builder.clean", "per-class DBSCAN over embeddings: outliers.csv, report.json, contact sheets"),
    "write": ("tfrec_builder.write", "write train/validation TFRecord shards, label map and manifest"),
    "verify": ("tfrec_builder.verify", "read every record of a shard folder and check it against its manifest"),
    "merge": ("tfrec_builder.merge", "join the shards of partitioned write workers into one dataset"),
}

DESCRIPTION = """\
Build cleaned, sharded GLDv2 TFRecords: embed -> clean (DBSCAN) -> write -> verify.
Run `tfrec-builder COMMAND --help` for the options of one command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("tfrec-builder", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
