"""The build kernels' variants for ``kernels push`` and the shard parts as Kaggle datasets for ``kernels datasets``.

* ``push build-write --part k``: one kernel per part, ``landmark-kaggle-build-write-part-k``
  (title "… Part k", and the launcher's ``PART = "k"``), so every part's
  output, at most 19 GB, stays attachable beside the others.
* ``push train --shards N``: the train kernel attaches the outputs of the N
  build-write kernels (``kernel_sources``); ``--shards FOLDER``: the parts in a
  local build folder, uploaded as datasets, by the ids in their
  ``dataset-metadata.json``. The train template attaches no shards of its own:
  a push names them, or ``--continue`` takes those of the last push
  (``ShardSources``, kept in its ``pushed.json``).
* ``push NAME --args '…'``: options appended to the kernel's command (e.g. the
  embed kernel's ``--image-size``), written into the pushed script.
* ``datasets --parts FOLDER``: the part folders of a local ``tfrec-builder write``,
  each uploaded as its own dataset (``kaggle datasets create -p`` per part).

Pure edits of a folder ``kernels.render_kernel`` rendered; it checks the
result against Kaggle's rules, ``command`` runs the client (this module
imports neither, so there is no circle).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import NamedTuple

from landmark_kaggle.errors import UserError
from landmark_kaggle.paths import find_inputs

WRITE_KERNEL = "build-write"
WRITE_SLUG = "landmark-kaggle-build-write-part-{k}"
WRITE_TITLE = "Landmark Kaggle Build Write Part {k}"
# The launcher's line that names its part (kernels/build-write/build_write.py).
PART_LINE = re.compile(r'^PART = "\d+"', re.MULTILINE)
# The one shard dataset older train templates attached; --shards replaces it.
TFREC_DATASET = "landmark-kaggle-tfrec"
# kernels/prelude.py's run() appends this variable's options to the command; --args sets it in the script,
# after the pasted prelude (whose last line rendering marks).
ARGS_ENV = "LANDMARK_KAGGLE_ARGS"
PRELUDE_END = "# ---- end of kernels/prelude.py ----"


def _read(folder: Path) -> tuple[dict, Path]:
    meta = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))
    return meta, folder / meta["code_file"]


def set_part(folder: Path, k: int, user: str) -> None:
    """Turn a rendered build-write kernel (part 1) into part ``k``: slug, title, its own sources and the code."""
    if k < 1:
        raise UserError(f"--part {k} must be 1 or more")
    meta, code = _read(folder)
    new_id = f"{user}/{WRITE_SLUG.format(k=k)}"
    meta["id"], meta["title"] = new_id, WRITE_TITLE.format(k=k)
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


class ShardSources(NamedTuple):
    """Where the train kernel's shards come from: build-write kernels' outputs and part datasets."""

    kernels: list[str]
    datasets: list[str]


def shard_sources(shards: str, user: str) -> ShardSources:
    """The sources that hold the shards: N build-write kernels, or a local build's parts."""
    if shards.isdigit():
        n = int(shards)
        if n < 1:
            raise UserError(f"--shards {shards}: the number of build-write parts, 1 or more")
        return ShardSources([f"{user}/{WRITE_SLUG.format(k=k)}" for k in range(1, n + 1)], [])
    if not Path(shards).is_dir():
        raise UserError(f"--shards {shards}: neither a number of build-write parts nor a folder")
    ids = [json.loads((f / "dataset-metadata.json").read_text(encoding="utf-8"))["id"] for f in part_folders(shards)]
    return ShardSources([], ids)


def set_shards(folder: Path, shards: str | ShardSources, user: str) -> None:
    """Attach the shards (``--shards N|FOLDER``, or the sources a previous push recorded) to the train kernel."""
    meta, _ = _read(folder)
    kernel_ids, dataset_ids = shards if isinstance(shards, ShardSources) else shard_sources(shards, user)
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


def adjust_rendered(folder: Path, name: str, user: str, *, part: int | None = None,
                    shards: str | ShardSources | None = None,
                    kernel_args: str | None = None) -> None:
    """Apply ``--part``, ``--shards`` and ``--args`` to kernel NAME rendered in ``folder`` (the caller checks it)."""
    if kernel_args:
        set_args(folder, kernel_args)
    if part is not None:
        if name != WRITE_KERNEL:
            raise UserError(f"--part is for the {WRITE_KERNEL} kernel (one per part), not {name}")
        set_part(folder, part, user)
    if shards is not None:
        if name != "train":
            raise UserError(f"--shards is for the train kernel, not {name}")
        set_shards(folder, shards, user)
