"""Check the parts of a split build together, as ``tfrec-builder verify PARENT`` does.

Each part folder is checked as a folder of its own (every record read); then
the parts as one build: they all carry the same build id, every part of the
table is there exactly once, their ``label_map.csv`` files are the same bytes,
each global shard is in exactly one part, no id is in two records, and over
all parts input = written + removed + failed. ``parts.json``, when the parent
holds one, must agree with the table inside every part's manifest; without it
(Kaggle mounts each part as its own dataset) the manifests' table is used.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from landmark_kaggle.data.records import SPLITS, shard_name
from tfrec_builder import manifest as mf
from tfrec_builder.checks import check_folder, id_problems, read_manifest
from tfrec_builder.parts import PARTS_FORMAT, PARTS_JSON, find_part_folders


def _table_doc(manifest: dict) -> dict:
    return {k: v for k, v in manifest["parts"].items() if k != "part"}


def _load(root: Path) -> tuple[dict | None, list[tuple[Path, dict]], list[str]]:
    problems: list[str] = []
    doc = None
    if (root / PARTS_JSON).is_file():
        try:
            doc = mf.read_json(root / PARTS_JSON)
        except ValueError as exc:
            problems.append(f"{PARTS_JSON}: not valid JSON ({exc})")
        if doc is not None and doc.get("format") != PARTS_FORMAT:
            problems.append(f"{PARTS_JSON}: format {doc.get('format')!r}, expected {PARTS_FORMAT!r}")
            doc = None
    found = []
    for folder in find_part_folders(root):
        manifest, bad = read_manifest(folder)
        problems += [f"{folder.relative_to(root)}/{line}" for line in bad]
        if manifest is not None:
            found.append((folder, manifest))
    return doc, found, problems


def _table_problems(doc: dict) -> list[str]:
    """The table itself must cover each split's shards 0..n-1 exactly once."""
    listed = Counter(name for row in doc["table"] for name in row["shards"])
    want = Counter(shard_name(split, i, doc["planned"][split]["shards"])
                   for split in SPLITS for i in range(doc["planned"][split]["shards"]))
    problems = [f"part table: shard {n} is in {c} parts" for n, c in sorted(listed.items()) if c > 1]
    problems += [f"part table: shard {n} is in no part" for n in sorted(set(want) - set(listed))]
    problems += [f"part table: {n} is not a shard of this build" for n in sorted(set(listed) - set(want))]
    if sum(row["input"] for row in doc["table"]) != doc["input"]:
        problems.append(f"part table: the parts' inputs add up to {sum(row['input'] for row in doc['table'])}, "
                        f"not the build's {doc['input']}")
    return problems


def verify_parts(root: Path, *, workers: int | None = 1, progress: bool = False) -> list[str]:
    """Every problem found in the parts under ``root``, checked one by one and as one build."""
    doc, found, problems = _load(root)
    if not found:
        return problems + [f"{root}: no part folder (with a manifest.json of a split build) found"]
    builds = Counter(m["parts"]["build"] for _, m in found)
    if doc is None:
        doc = _table_doc(next(m for _, m in found if m["parts"]["build"] == builds.most_common(1)[0][0]))
    by_part: dict[int, tuple[Path, dict]] = {}
    for folder, m in found:
        name = folder.relative_to(root)
        if m["parts"]["build"] != doc["build"]:
            problems.append(f"{name}: part {m['parts']['part']} of another build (build id "
                            f"{m['parts']['build'][:12]}…, not {doc['build'][:12]}…)")
        elif _table_doc(m) != doc:
            problems.append(f"{name}/manifest.json: its part table differs from {PARTS_JSON}")
        elif m["parts"]["part"] in by_part:
            problems.append(f"{name}: part {m['parts']['part']} again (also in {by_part[m['parts']['part']][0]})")
        else:
            by_part[m["parts"]["part"]] = (folder, m)
    problems += _table_problems(doc)
    for row in doc["table"]:
        if row["part"] not in by_part:
            problems.append(f"part {row['part']} of {doc['count']} ({row['folder']}, Kaggle dataset {row['id']}): "
                            "missing")
    labels = {folder: (folder / mf.LABEL_MAP).read_bytes() for folder, _ in by_part.values()
              if (folder / mf.LABEL_MAP).is_file()}
    first = next(iter(labels.values()), None)
    for folder, data in labels.items():
        if data != first:
            problems.append(f"{folder.relative_to(root)}/{mf.LABEL_MAP}: differs from part "
                            f"{min(by_part)}'s")
    seen: Counter[str] = Counter()
    failed_ids: set[str] = set()
    for k in sorted(by_part):
        folder, m = by_part[k]
        found_here, ids = check_folder(folder, m, workers=workers, progress=progress)
        problems += [f"{folder.relative_to(root)}/{line}" for line in found_here]
        seen.update(ids)
        failed_ids |= {f["id"] for f in m["failed_images"]}
    problems += id_problems(seen, failed_ids)
    if len(by_part) == doc["count"]:
        ms = [m for _, m in by_part.values()]
        written = sum(sum(m["written"].values()) for m in ms)
        removed, failed = sum(m["removed"] for m in ms), sum(m["failed"] for m in ms)
        if written + removed + failed != doc["input"]:
            problems.append(f"all parts: written {written} + removed {removed} + failed {failed} = "
                            f"{written + removed + failed}, but the build's input is {doc['input']}")
    return problems


def parts_summary(root: Path) -> str:
    """One line on a sound split build (after ``verify_parts`` found no problem)."""
    ms = [mf.read_json(folder / mf.MANIFEST) for folder in find_part_folders(root)]
    doc = _table_doc(ms[0])
    w = {split: sum(m["written"][split] for m in ms) for split in SPLITS}
    removed, failed = sum(m["removed"] for m in ms), sum(m["failed"] for m in ms)
    return (f"all {doc['count']} parts of build {doc['build'][:12]}…, {sum(len(m['shards']) for m in ms)} shards, "
            f"{w['train']} train + {w['validation']} validation records decode and match their manifests "
            f"(input {doc['input']} = written + removed {removed} + failed {failed} over all parts)")
