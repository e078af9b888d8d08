"""The build kernels' variants for ``kernels push`` and the shard parts as Kaggle datasets for ``kernels datasets``.

* ``push build-write --part k``: one kernel per part, ``landmark-kaggle-build-write-part-k``
  (title "… Part k", and the launcher's ``PART = "k"``), so every part's
  output, at most 19 GB, stays attachable beside the others.
* ``push train --shards N``: the train kernel attaches the outputs of the N
  build-write kernels (``kernel_sources``); ``--shards FOLDER``: the parts in a
  local build folder, uploaded as datasets, by the ids in their
  ``dataset-metadata.json``. Either replaces the template's single shard dataset.
* ``push NAME --args '…'``: options appended to the kernel's command (e.g. the
  embed kernel's ``--image-size``), written into the pushed script.
* ``datasets --parts FOLDER``: the part folders of a local ``tfrec-builder write``,
  each uploaded as its own dataset (``kaggle datasets create -p`` per part).

Pure edits of rendered folders; ``kernels`` checks the result against Kaggle's
rules and runs the client (this module imports neither, so there is no circle).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

from landmark_kaggle.errors import UserError
from landmark_kaggle.paths import find_inputs

WRITE_KERNEL = "build-write"
WRITE_SLUG = "landmark-kaggle-build-write-part-{k}"
WRITE_TITLE = "Landmark Kaggle Build Write Part {k}"
# The launcher's line that names its part (kernels/build-write/build_write.py).
PART_LINE = re.compile(r'^PART = "\d+"', re.MULTILINE)
# The train template's one shard dataset, replaced by --shards.
TFREC_DATASET = "landmark-kaggle-tfrec"
# kernels/prelude.py's run() appends this variable's options to the command; --args sets it in the script,
# after the pasted prelude (whose last line rendering marks).
ARGS_ENV = "LANDMARK_KAGGLE_ARGS"
PRELUDE_END = "# ---- end of kernels/prelude.py ----"


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--args", dest="kernel_args", metavar="'OPTIONS'",
                   help="options appended to the kernel's command, written into the pushed script (e.g. "
                        "--args '--image-size 300'); a version that continues another needs the same ones")
    p.add_argument("--part", type=int, metavar="K",
                   help=f"{WRITE_KERNEL}: render the kernel for part K (slug {WRITE_SLUG.format(k='K')})")
    p.add_argument("--shards", metavar="N|FOLDER",
                   help="train: attach the outputs of the N build-write kernels, or the part datasets of a local "
                        "build FOLDER (their dataset-metadata.json ids), instead of the one shard dataset")


def add_datasets_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--parts", metavar="FOLDER",
                   help="upload each part folder of a local `tfrec-builder write` (FOLDER holds them, or is one) "
                        "as its own dataset, instead of the bundle folders")


def _read(folder: Path) -> tuple[dict, Path]:
    meta = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))
    return meta, folder / meta["code_file"]


def set_part(folder: Path, k: int, user: str) -> None:
    """Turn a rendered build-write kernel (part 1) into part ``k``: slug, title, its own sources and the code."""
    if k < 1:
        raise UserError(f"--part {k} must be 1 or more")
    meta, code = _read(folder)
    old_id, new_id = meta["id"], f"{user}/{WRITE_SLUG.format(k=k)}"
    meta["id"], meta["title"] = new_id, WRITE_TITLE.format(k=k)
    # --continue attached the part's own output under the part-1 id that rendering started from.
    meta["kernel_sources"] = [new_id if s == old_id else s for s in meta.get("kernel_sources", [])]
    text = code.read_text(encoding="utf-8")
    if len(PART_LINE.findall(text)) != 1:
        raise UserError(f"{code}: expected one line `PART = \"1\"` for --part to rewrite")
    code.write_text(PART_LINE.sub(f'PART = "{k}"', text), encoding="utf-8")
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def part_folders(folder: str | Path) -> list[Path]:
    """The part (or plain shard) folders of a local build, found by what they hold; each needs its metadata."""
    found = find_inputs(folder).every("shards")
    missing = [str(f) for f in found if not (f / "dataset-metadata.json").is_file()]
    if missing:
        raise UserError(f"no dataset-metadata.json in {', '.join(missing)}: write them with `tfrec-builder write`")
    return found


def shard_sources(shards: str, user: str) -> tuple[list[str], list[str]]:
    """(kernel sources, dataset sources) that hold the shards: N build-write kernels, or a local build's parts."""
    if shards.isdigit():
        n = int(shards)
        if n < 1:
            raise UserError(f"--shards {shards}: the number of build-write parts, 1 or more")
        return [f"{user}/{WRITE_SLUG.format(k=k)}" for k in range(1, n + 1)], []
    if not Path(shards).is_dir():
        raise UserError(f"--shards {shards}: neither a number of build-write parts nor a folder")
    ids = [json.loads((f / "dataset-metadata.json").read_text(encoding="utf-8"))["id"] for f in part_folders(shards)]
    return [], ids


def set_shards(folder: Path, shards: str, user: str) -> None:
    meta, _ = _read(folder)
    kernel_ids, dataset_ids = shard_sources(shards, user)
    datasets = [s for s in meta.get("dataset_sources", []) if s.split("/")[1] != TFREC_DATASET]
    meta["dataset_sources"] = [*datasets, *(d for d in dataset_ids if d not in datasets)]
    meta["kernel_sources"] = [*meta.get("kernel_sources", []),
                              *(k for k in kernel_ids if k not in meta.get("kernel_sources", []))]
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def set_args(folder: Path, options: str) -> None:
    """Write ``options`` into the rendered script: the prelude's ``run`` appends LANDMARK_KAGGLE_ARGS to the command."""
    shlex.split(options)  # refuse unbalanced quotes here, not in the kernel
    _, code = _read(folder)
    text = code.read_text(encoding="utf-8")
    end = text.index(PRELUDE_END) + len(PRELUDE_END)
    # Options set where it runs (a rehearsal on a laptop) come after, so they win.
    line = (f"\nos.environ[{ARGS_ENV!r}] = {options!r} + ' ' + os.environ.get({ARGS_ENV!r}, '')"
            "  # kernels push --args\n")
    if "import os\n" not in text[:end]:
        line = "\nimport os\n" + line
    code.write_text(text[:end] + line + text[end:], encoding="utf-8")


def adjust_rendered(folder: Path, args: argparse.Namespace, user: str) -> None:
    """Apply ``--part``, ``--shards`` and ``--args`` to a rendered kernel folder (the caller checks the result)."""
    if args.kernel_args:
        set_args(folder, args.kernel_args)
    if args.part is not None:
        if args.name != WRITE_KERNEL:
            raise UserError(f"--part is for the {WRITE_KERNEL} kernel (one per part), not {args.name}")
        set_part(folder, args.part, user)
    if args.shards is not None:
        if args.name != "train":
            raise UserError(f"--shards is for the train kernel, not {args.name}")
        set_shards(folder, args.shards, user)
