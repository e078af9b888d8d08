"""Write a GLDv2 folder as training shards: ``<split>-%05d-of-%05d.tfrec``, label map, manifest, Kaggle metadata.

Outliers from ``clean/outliers.csv`` are left out, each class is split into
train/validation, and every image is copied (a baseline RGB JPEG that fits) or
converted to one (``tfrec_builder.images``). Each shard is built whole by one
worker process (``tfrec_builder.shard``; with one worker, by this process):
written to ``.build/tmp`` and renamed into place only once it is complete and
its state is saved, so a killed build never leaves a partial shard under its
final name, and rerunning the same command skips finished shards and
ends byte-identical to an uninterrupted build (shards, ``label_map.csv``,
``manifest.json`` and ``dataset-metadata.json``; run times go to
``.build/runs.jsonl``). ``--worker-index i --num-workers n`` writes every n-th
shard, so several machines share one build; ``tfrec-builder merge`` joins them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from landmark_kaggle import gld
from landmark_kaggle.errors import UserError
from landmark_kaggle.records import SPLITS
from tfrec_builder import manifest as mf
from tfrec_builder.plan import Plan, ShardPlan, make_plan
from tfrec_builder.shard import (
    ShardId,
    build_shard,
    init_worker,
    prepared,
    read_ahead,
    write_shard,
)


def _rows(shard: ShardPlan) -> list[tuple]:
    return list(shard.frame[["id", "landmark_id", "label", "path"]].itertuples(index=False, name=None))


def _shard_id(shard: ShardPlan) -> ShardId:
    return ShardId(shard.name, shard.split, shard.index, shard.total)


def _run_shards(out: Path, fingerprint: str, todo: list[ShardPlan], image_size: int, quality: int, workers: int,
                bar) -> Iterator[dict]:
    plans = [(_shard_id(shard), _rows(shard)) for shard in todo]
    if workers == 1:
        # One stream of reads across shard boundaries, so the kernel's read-ahead never pauses.
        datas = read_ahead([row[3] for _, rows in plans for row in rows])
        for shard, rows in plans:
            yield write_shard(out, fingerprint, shard, rows, prepared(rows, datas, image_size, quality))
            bar.update(len(rows))
        return
    # Processes, not threads: decoding and re-encoding hold the GIL. Spawned, because forking a
    # parent that may have imported TensorFlow is unsafe. Each worker builds whole shards, so
    # no image crosses a process boundary. An executor, not multiprocessing.Pool: a worker
    # that dies breaks it loudly instead of hanging.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker)
    try:
        futures = [pool.submit(build_shard, out, fingerprint, shard, rows, image_size, quality)
                   for shard, rows in plans]
        for future in as_completed(futures):
            state = future.result()
            bar.update(state["planned"])
            yield state
    except BrokenProcessPool as exc:
        raise UserError(f"a worker process died ({exc}); finished shards are kept: rerun the same command "
                        "to resume, with --workers 1 to see the error in this process") from None
    finally:
        # On an error or an interrupt, shards not yet started are dropped rather than built.
        pool.shutdown(wait=True, cancel_futures=True)


def _finished_state(out: Path, name: str, fingerprint: str) -> dict | None:
    shard, state_file = out / name, mf.state_path(out, name)
    if not (shard.is_file() and state_file.is_file()):
        return None
    try:
        state = mf.read_json(state_file)
    except ValueError:  # cut short by a power loss (states are not fsynced): write the shard again
        return None
    if state.get("plan") != fingerprint or state.get("bytes") != shard.stat().st_size:
        return None
    return state


def _check_plan(out: Path, plan: Plan, settings: dict) -> None:
    path = mf.build_dir(out) / "plan.json"
    record = {"plan": plan.fingerprint, "settings": settings}
    if path.is_file():
        old = mf.read_json(path)
        if old.get("plan") != plan.fingerprint:
            raise UserError(f"{out}: holds a build with different inputs or settings ({path}: {old.get('settings')}); "
                            "write to a new --out folder or delete this one")
        return
    mf.write_atomic(path, mf.dumps(record))


def _head(plan: Plan, settings: dict) -> dict:
    planned = {split: {"images": sum(len(s.frame) for s in plan.shards if s.split == split),
                       "shards": next((s.total for s in plan.shards if s.split == split), 0)} for split in SPLITS}
    return {
        "format": mf.FORMAT,
        "settings": settings,
        "plan": plan.fingerprint,
        "input": plan.input_count,
        "removed": len(plan.removed),
        "removed_by_reason": dict(sorted(Counter(plan.removed["reason"].astype(str)).items())),
        "num_classes": len(plan.label_map),
        "planned": planned,
    }


def write_dataset(data_dir, out_dir, *, outliers=None, image_size: int = 512, quality: int = 90,
                  shard_mb: float = 100, val_fraction: float = 0.02, seed: int = 0, workers: int | None = None,
                  worker_index: int = 0, num_workers: int = 1, dataset_id: str | None = None,
                  progress: bool = True) -> dict:
    """Build (or finish building) the shard folder; return the manifest (or this worker's part of it)."""
    checks = [(image_size >= 16, f"--image-size {image_size} must be >= 16"),
              (1 <= quality <= 100, f"--quality {quality} must be in 1..100"),
              (shard_mb > 0, f"--shard-mb {shard_mb} must be > 0"),
              (0 <= val_fraction < 1, f"--val-fraction {val_fraction} must be in [0, 1)"),
              (num_workers >= 1 and 0 <= worker_index < num_workers,
               f"--worker-index {worker_index} must be in 0..--num-workers-1 ({num_workers})")]
    for ok, why in checks:
        if not ok:
            raise UserError(why)
    started = time.time()
    out = Path(out_dir)
    if outliers and not Path(outliers).is_file():
        raise gld.GLDError(f"{outliers}: outliers file not found")
    settings = {"image_size": image_size, "quality": quality, "shard_mb": shard_mb, "val_fraction": val_fraction,
                "seed": seed, "outliers_sha256": mf.sha256_file(outliers) if outliers else None}
    plan = make_plan(data_dir, outliers=outliers, image_size=image_size, quality=quality, shard_mb=shard_mb,
                     val_fraction=val_fraction, seed=seed)
    settings["source"] = plan.source.name
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan, settings)
    mine = [s for k, s in enumerate(plan.shards) if k % num_workers == worker_index]
    states = {s.name: st for s in mine if (st := _finished_state(out, s.name, plan.fingerprint))}
    todo = [s for s in mine if s.name not in states]
    workers = max(1, workers or len(os.sched_getaffinity(0)))
    bar = tqdm(total=sum(len(s.frame) for s in mine), initial=sum(st["planned"] for st in states.values()),
               unit="img", desc="write", disable=not progress)
    try:
        for st in _run_shards(out, plan.fingerprint, todo, image_size, quality, workers if todo else 1, bar):
            states[st["file"]] = st
    finally:
        bar.close()
    lm_ids = plan.label_map["landmark_id"].astype(int).tolist()
    mf.write_atomic(out / mf.LABEL_MAP, plan.label_map[gld.LABEL_MAP_COLUMNS].to_csv(index=False).encode())
    mf.write_atomic(out / mf.DATASET_METADATA, mf.dumps(mf.dataset_metadata(dataset_id, image_size)))
    head = _head(plan, settings)
    if num_workers == 1:
        result = mf.compose(head, list(states.values()), lm_ids)
        mf.write_atomic(out / mf.MANIFEST, mf.dumps(result))
    else:
        result = mf.compose(head, list(states.values()), lm_ids, partition=(worker_index, num_workers))
        mf.write_atomic(mf.part_path(out, worker_index, num_workers), mf.dumps(result))
        from tfrec_builder.merge import all_parts_present, merge_parts

        if all_parts_present(out, num_workers):
            # The workers shared this folder and this one finished last: join them now.
            result = merge_parts([out], out) | {"joined": True}
    log = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 3),
           "shards_written": len(todo), "shards_skipped": len(mine) - len(todo), "workers": workers,
           "worker_index": worker_index, "num_workers": num_workers}
    with open(mf.build_dir(out) / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(log) + "\n")
    result["_run"] = log
    return result


def summary(result: dict, out_dir) -> str:
    w = result["written"]
    part = None if result.get("joined") else result.get("partition")
    who = f"worker {part['worker_index']}/{part['num_workers']}: " if part else ""
    run = result.get("_run", {})
    return (f"{who}wrote {w['train']} train + {w['validation']} validation images in {len(result['shards'])} shards "
            f"to {out_dir} ({run.get('shards_skipped', 0)} already done); removed {result['removed']} outliers; "
            f"failed {result['failed']}{' (reasons in manifest.json)' if result['failed'] else ''}; "
            f"input {result['input']}; {run.get('seconds', 0):.1f} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="GLDv2 folder (train.csv or train_clean.csv, train/a/b/c/<id>.jpg)")
    parser.add_argument("--out", required=True, help="output folder for shards, label_map.csv and manifest.json")
    parser.add_argument("--outliers", help="clean/outliers.csv (id,landmark_id,cluster,reason): images to leave out")
    parser.add_argument("--image-size", type=int, default=512, help="longest side in pixels; never upscaled")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality for re-encoded images")
    parser.add_argument("--shard-mb", type=float, default=100, help="approximate shard size in MB")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="validation share of each class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--worker-index", type=int, default=0, help="this machine's part, 0..num-workers-1")
    parser.add_argument("--num-workers", type=int, default=1, help="machines sharing the build")
    parser.add_argument("--dataset-id", help="Kaggle dataset OWNER/SLUG for dataset-metadata.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    result = write_dataset(args.data, args.out, outliers=args.outliers, image_size=args.image_size,
                           quality=args.quality, shard_mb=args.shard_mb, val_fraction=args.val_fraction,
                           seed=args.seed, workers=args.workers, worker_index=args.worker_index,
                           num_workers=args.num_workers, dataset_id=args.dataset_id,
                           progress=not args.no_progress)
    print(summary(result, args.out))
    if args.num_workers > 1 and not result.get("joined"):
        print(f"join the {args.num_workers} parts with: tfrec-builder merge {args.out} [OTHER_PART_DIRS…] "
              f"--out FOLDER")
    return 0
