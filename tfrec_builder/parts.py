"""Split one planned build into parts that are each a Kaggle dataset: which global shards go where, and names.

Kaggle keeps at most 20 GB of a kernel's output, so a build larger than
``--max-part-gb`` is written as parts, one kernel run each. A part is a
complete dataset folder ``<base>-part-<k>`` (k = 1..P) holding a subset of the
unsplit build's shards under their global names, so the parts' shards together
are the unsplit build's, byte for byte. The split is decided from the plan's
size model alone (``plan.estimated_bytes``): contiguous runs of train shards
and of validation shards, balanced by planned bytes, each part at most
``PART_FILL`` of the cap. Every machine computes the same split from the same
inputs and settings.

The split is described by one document: ``parts.json`` beside the part folders,
and the same document (plus ``"part": k``) under ``"parts"`` in each part's
``manifest.json``, so a reader holding only the part datasets still sees the
whole table. Two part folders belong to one build when their ``build`` ids
(sha256 over the plan fingerprint and the table) are equal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

from landmark_kaggle.data.records import SPLITS
from landmark_kaggle.errors import UserError
from tfrec_builder.plan import Plan, ShardPlan

PARTS_FORMAT = "landmark-kaggle-tfrec-parts/1"
PARTS_JSON = "parts.json"
GB = 10**9  # decimal: Kaggle's "20 GB" read either way, 19·10⁹ stays under it
# A part is planned to at most this share of --max-part-gb: room for the size model's error.
PART_FILL = 0.95
DEFAULT_SLUG = "gldv2-tfrec-{size}"
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
SLUG_MIN, SLUG_MAX = 6, 50  # the kaggle client's dataset slug rule (5 on the web form, 6 in `datasets create`)


def human(nbytes: float) -> str:
    for unit, scale in (("GB", GB), ("MB", 10**6), ("KB", 10**3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} B"


def part_folder(base: str, k: int) -> str:
    return f"{base}-part-{k}"


def dataset_ref(dataset_id: str | None, image_size: int, parts: int = 1) -> tuple[str, str]:
    """``(owner, slug)`` from ``--dataset-id`` or KAGGLE_USERNAME; checked so every part's slug is valid."""
    if dataset_id:
        owner, _, slug = dataset_id.partition("/")
        if not owner or "/" in slug or not slug:
            raise UserError(f"--dataset-id {dataset_id!r} must be OWNER/SLUG")
    else:
        owner = os.environ.get("KAGGLE_USERNAME") or "INSERT_YOUR_USERNAME"
        slug = DEFAULT_SLUG.format(size=image_size)
    longest = part_folder(slug, parts) if parts > 1 else slug
    if not _SLUG.match(slug) or "--" in slug or not SLUG_MIN <= len(longest) <= SLUG_MAX:
        raise UserError(f"--dataset-id slug {slug!r}: Kaggle needs {SLUG_MIN}–{SLUG_MAX} lowercase letters, digits "
                        f"and single hyphens" + (f", and the longest part's {longest!r} too" if parts > 1 else ""))
    return owner, slug


def _assign(shards: list[ShardPlan], n: int) -> list[int]:
    """Part (0-based) of each shard in one split: contiguous runs, equal shares of the split's planned bytes."""
    total = sum(s.planned_bytes for s in shards) or 1
    out, before = [], 0
    for s in shards:
        out.append(min(n - 1, int((before + s.planned_bytes / 2) * n // total)))
        before += s.planned_bytes
    return out


def split_parts(shards: list[ShardPlan], max_part_gb: float) -> list[list[ShardPlan]]:
    """The plan's shards grouped into parts of planned bytes ≤ ``PART_FILL·max_part_gb``; one group when all fit."""
    cap = max_part_gb * GB * PART_FILL
    total = sum(s.planned_bytes for s in shards)
    if total <= cap:
        return [list(shards)]
    biggest = max(shards, key=lambda s: s.planned_bytes)
    if biggest.planned_bytes > cap:
        raise UserError(f"shard {biggest.name} is planned at {biggest.planned_bytes / GB:.3g} GB, more than a part "
                        f"may hold ({cap / GB:.3g} GB = {PART_FILL:.0%} of --max-part-gb {max_part_gb:g}); "
                        "lower --shard-mb")
    n = math.ceil(total / cap)
    while True:
        groups: list[list[ShardPlan]] = [[] for _ in range(n)]
        for split in SPLITS:
            mine = [s for s in shards if s.split == split]
            for s, k in zip(mine, _assign(mine, n), strict=True):
                groups[k].append(s)
        if all(groups) and max(sum(s.planned_bytes for s in g) for g in groups) <= cap:
            return groups
        n += 1  # shards are indivisible: a run that overshoots the cap moves the split on by a part


def parts_doc(plan: Plan, groups: list[list[ShardPlan]], *, settings: dict, max_part_gb: float,
              owner: str, base: str) -> dict:
    """``parts.json``: the build's part table; what each part's manifest repeats under ``"parts"``."""
    removed = len(plan.removed)
    table = []
    for k, group in enumerate(groups, start=1):
        images = sum(len(s.frame) for s in group)
        table.append({
            "part": k,
            "folder": part_folder(base, k),
            "id": f"{owner}/{part_folder(base, k)}",
            "shards": [s.name for s in group],
            "images": images,
            # The outliers belong to no shard; part 1 accounts for them.
            "removed": removed if k == 1 else 0,
            "input": images + (removed if k == 1 else 0),
            "planned_bytes": sum(s.planned_bytes for s in group),
        })
    build = hashlib.sha256(json.dumps([plan.fingerprint, [t["shards"] for t in table]]).encode()).hexdigest()
    planned = {split: {"images": sum(len(s.frame) for s in plan.shards if s.split == split),
                       "shards": next((s.total for s in plan.shards if s.split == split), 0)} for split in SPLITS}
    return {"format": PARTS_FORMAT, "build": build, "plan": plan.fingerprint, "settings": settings,
            "max_part_gb": max_part_gb, "part_fill": PART_FILL, "count": len(table), "input": plan.input_count,
            "removed": removed, "num_classes": len(plan.label_map), "planned": planned, "table": table}


def dataset_metadata(owner: str, slug: str, image_size: int, part: tuple[int, int] | None = None) -> dict:
    """``kaggle datasets create -p DIR`` metadata: titles of 6–50 characters, one licence, a 20–80 subtitle."""
    title = f"GLDv2 TFRecords {image_size}px"
    if part is not None:
        title += f" part {part[0]} of {part[1]}"
        slug = part_folder(slug, part[0])
    return {
        "title": title,
        "id": f"{owner}/{slug}",
        "licenses": [{"name": "CC-BY-4.0"}],
        "subtitle": "Cleaned Google Landmarks v2 shards with a manifest",
        "keywords": ["image", "computer vision"],
    }


def find_part_folders(root: str | os.PathLike) -> list[Path]:
    """Subfolders of ``root`` (and their subfolders, as Kaggle mounts ``datasets/<owner>/<slug>``) holding a part."""
    root = Path(root)
    found = []
    for pattern in ("*/manifest.json", "*/*/manifest.json", "*/*/*/manifest.json"):
        for path in sorted(root.glob(pattern)):
            try:
                with open(path, encoding="utf-8") as fh:
                    if "parts" in json.load(fh):
                        found.append(path.parent)
            except (OSError, ValueError):
                found.append(path.parent)  # unreadable: let verify name it
    return found
