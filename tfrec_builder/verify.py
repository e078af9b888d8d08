"""``tfrec-builder verify``: a shard folder, one part of a split build, or the folder holding all its parts.

A folder is checked record by record against its manifest (``checks``); a
part of a split build the same way against its row of the part table; the
folder holding all the parts part by part and then as one build
(``verify_parts``). The command prints every problem and exits 1 when there
are any.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tfrec_builder import manifest as mf
from tfrec_builder.checks import check_folder, id_problems, read_manifest
from tfrec_builder.parts import PARTS_JSON, find_part_folders
from tfrec_builder.verify_parts import parts_summary, verify_parts


def verify_dataset(out_dir, *, workers: int | None = 1, progress: bool = False) -> list[str]:
    """Every problem found in the shard folder ``out_dir`` (or in the parts under it); empty means sound."""
    out = Path(out_dir)
    if not (out / mf.MANIFEST).exists() and ((out / PARTS_JSON).is_file() or find_part_folders(out)):
        return verify_parts(out, workers=workers, progress=progress)
    manifest, problems = read_manifest(out)
    if manifest is None:
        return problems
    problems, seen = check_folder(out, manifest, workers=workers, progress=progress)
    return problems + id_problems(seen, {f["id"] for f in manifest["failed_images"]})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="shard folder written by `tfrec-builder write` (or `merge`), one part of a split "
                                    "build, or the folder holding all its parts (checked together)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--show", type=int, default=50, help="list at most this many problems")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    problems = verify_dataset(args.dir, workers=args.workers, progress=not args.no_progress)
    if problems:
        for line in problems[:args.show]:
            print(line)
        more = len(problems) - args.show
        print(f"{args.dir}: {len(problems)} problem(s){f' ({more} not shown)' if more > 0 else ''}")
        return 1
    manifest_path = Path(args.dir) / mf.MANIFEST
    if not manifest_path.exists():
        print(f"{args.dir}: OK — {parts_summary(Path(args.dir))}")
        return 0
    m = mf.read_json(manifest_path)
    part = f"part {m['parts']['part']} of {m['parts']['count']}: " if "parts" in m else ""
    print(f"{args.dir}: OK — {part}{len(m['shards'])} shards, {m['written']['train']} train + "
          f"{m['written']['validation']} validation records decode and match manifest.json "
          f"(input {m['input']} = written + removed {m['removed']} + failed {m['failed']})")
    return 0
