"""The ``tfrec-builder`` command line: embed, clean, write and verify GLDv2 TFRecords."""

from __future__ import annotations

from collections.abc import Sequence

from landmark_kaggle.clibase import main_for

COMMANDS: dict[str, tuple[str, str]] = {}

DESCRIPTION = """\
Build cleaned, sharded GLDv2 TFRecords: embed -> clean (DBSCAN) -> write -> verify.
Run `tfrec-builder COMMAND --help` for the options of one command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("tfrec-builder", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
