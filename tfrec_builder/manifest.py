"""The shard folder's bookkeeping: ``manifest.json``, per-shard state, ``dataset-metadata.json``, atomic writes.

``manifest.json`` accounts for every input id: written per split + removed as
outlier + failed (each with its reason) = input; each shard has its record
count and sha256. It holds no times, hosts or absolute paths, so an interrupted
and resumed build, a partitioned build joined by ``merge`` and a single
uninterrupted build give the same bytes. Build state (per-shard results, run
log, temporary shards) lives in the hidden ``.build/`` folder, which
``kaggle datasets create -p DIR`` skips like every subfolder.

A part of a split build (``tfrec_builder.parts``) has the same manifest over
its own shards, with its own ``input`` (its shards' images, plus the outliers
in part 1), and the build's part table under ``"parts"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from landmark_kaggle.data.records import SPLITS
from landmark_kaggle.fileio import atomic_write

FORMAT = "landmark-kaggle-tfrec/1"
MANIFEST = "manifest.json"
LABEL_MAP = "label_map.csv"
DATASET_METADATA = "dataset-metadata.json"
BUILD_DIR = ".build"


def build_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / BUILD_DIR


def state_path(out_dir: str | os.PathLike, shard_file: str) -> Path:
    return build_dir(out_dir) / "shards" / f"{shard_file}.json"


def part_path(out_dir: str | os.PathLike, worker_index: int, num_workers: int) -> Path:
    return build_dir(out_dir) / f"manifest-part-{worker_index:05d}-of-{num_workers:05d}.json"


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """``fileio.atomic_write``, durable by default: manifests and metadata survive a power cut, not only a kill
    (per-shard state passes ``durable=False``: a lost state only means that shard is written again)."""
    return atomic_write(path, data, durable=durable)


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


PART_KEYS = ("written", "failed", "failed_images", "actions", "shards", "partition", "balanced",
             "classes_without_train_images")


def _shard_entry(state: dict) -> dict:
    return {k: state[k] for k in ("file", "split", "index", "total", "count", "bytes", "sha256")} | {
        "failed": len(state["failed"]) if isinstance(state["failed"], list) else state["failed"]}


def _finish(head: dict, shards: list[dict], failed: list[dict], actions: dict, trained: set[int],
            landmark_ids: list[int], partition: tuple[int, int] | None) -> dict:
    shards = sorted(shards, key=lambda s: (SPLITS.index(s["split"]), s["index"]))
    written = {split: sum(s["count"] for s in shards if s["split"] == split) for split in SPLITS}
    manifest = {k: v for k, v in head.items() if k not in PART_KEYS}
    manifest.update({
        "written": written,
        "failed": len(failed),
        "failed_images": sorted(failed, key=lambda f: f["id"]),
        "actions": dict(sorted(actions.items())),
        "shards": shards,
    })
    if partition is None:
        if "parts" not in head:  # a part sees only some classes' training images: only the whole build can say
            manifest["classes_without_train_images"] = sorted(set(landmark_ids) - trained)
        manifest["balanced"] = sum(written.values()) + head["removed"] + len(failed) == head["input"]
    else:
        manifest["partition"] = {"worker_index": partition[0], "num_workers": partition[1],
                                 "train_landmarks": sorted(trained)}
    return manifest


def compose(head: dict, states: list[dict], landmark_ids: list[int],
            partition: tuple[int, int] | None = None) -> dict:
    """The manifest from the plan's ``head`` (settings, input, removed, planned shards) and shard states.

    ``landmark_ids`` are the label map's; with ``partition`` (worker i of n) the
    result is one worker's part, which ``join`` merges with the others.
    """
    failed = [f | {"split": s["split"], "shard": s["file"]} for s in states for f in s["failed"]]
    actions: dict[str, int] = {}
    for s in states:
        for k, v in s["actions"].items():
            actions[k] = actions.get(k, 0) + v
    trained = {lm for s in states if s["split"] == "train" for lm in s["landmarks"]}
    return _finish(head, [_shard_entry(s) for s in states], failed, actions, trained, landmark_ids, partition)


def join(parts: list[dict], landmark_ids: list[int]) -> dict:
    """One manifest from every worker's part; identical to what a single-worker build writes."""
    actions: dict[str, int] = {}
    for p in parts:
        for k, v in p["actions"].items():
            actions[k] = actions.get(k, 0) + v
    return _finish(parts[0], [s for p in parts for s in p["shards"]], [f for p in parts for f in p["failed_images"]],
                   actions, {lm for p in parts for lm in p["partition"]["train_landmarks"]}, landmark_ids, None)
