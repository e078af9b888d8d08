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

A build planned larger than ``--max-part-gb`` is written as parts, each a
Kaggle dataset folder ``OUT/<slug>-part-<k>`` (``tfrec_builder.parts``); ``--part k``
writes one of them, resumable the same way. Many images failing for one reason
stop the build (``tfrec_builder.failures``); ``--estimate`` writes nothing and
predicts the bytes (``tfrec_builder.estimate``).
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

from landmark_kaggle.data import gld
from landmark_kaggle.data.records import SPLITS
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import file_sha256
from tfrec_builder import manifest as mf
from tfrec_builder.failures import FailureWatch, Systematic, reason_key
from tfrec_builder.parts import GB, PARTS_JSON, dataset_metadata, dataset_ref, human, parts_doc, split_parts
from tfrec_builder.plan import Plan, ShardPlan, check_settings, make_plan
from tfrec_builder.shard import (
    ShardId,
    build_shard,
    init_worker,
    prepared,
    read_ahead,
    write_shard,
)

DEFAULT_MAX_PART_GB = 19.0


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


def _check_plan(out: Path, plan: Plan, settings: dict, parts: dict | None) -> None:
    path = mf.build_dir(out) / "plan.json"
    record = {"plan": plan.fingerprint, "settings": settings}
    if parts is not None:
        record |= {"build": parts["build"], "part": parts["part"]}
    if path.is_file():
        old = mf.read_json(path)
        if old.get("plan") != plan.fingerprint:
            raise UserError(f"{out}: holds a build with different inputs or settings ({path}: {old.get('settings')}); "
                            "write to a new --out folder or delete this one")
        if (old.get("build"), old.get("part")) != (record.get("build"), record.get("part")):
            raise UserError(f"{out}: holds part {old.get('part')} of a build split another way (another "
                            "--max-part-gb?); write to a new --out folder or delete this one")
        return
    mf.write_atomic(path, mf.dumps(record))


def _planned(shards: list[ShardPlan]) -> dict:
    return {split: {"images": sum(len(s.frame) for s in shards if s.split == split),
                    "shards": sum(1 for s in shards if s.split == split)} for split in SPLITS}


def _head(plan: Plan, settings: dict, part: dict | None = None, doc: dict | None = None) -> dict:
    """The manifest's fields known before writing; for a part of a split build, its own input, removed, planned."""
    head = {"format": mf.FORMAT, "settings": settings, "plan": plan.fingerprint, "num_classes": len(plan.label_map)}
    removed = Counter(plan.removed["reason"].astype(str))
    if part is None:
        return head | {"input": plan.input_count, "removed": len(plan.removed),
                       "removed_by_reason": dict(sorted(removed.items())), "planned": _planned(plan.shards)}
    names = set(part["shards"])
    mine = [s for s in plan.shards if s.name in names]
    return head | {"input": part["input"], "removed": part["removed"],
                   "removed_by_reason": dict(sorted(removed.items())) if part["removed"] else {},
                   "planned": _planned(mine), "parts": doc | {"part": part["part"]}}


def _tripped(watch: FailureWatch, final: bool = False) -> Systematic | None:
    try:
        watch.check(final)
    except Systematic as exc:
        return exc
    return None


def _stop(out: Path, exc: Systematic, shards: list[ShardPlan]) -> None:
    """Drop every finished shard that holds a failure of the tripped reason, then raise: the input needs fixing."""
    dropped = 0
    for state_file in sorted((mf.build_dir(out) / "shards").glob("*.json")):
        try:
            state = mf.read_json(state_file)
        except ValueError:
            continue
        if any(reason_key(f["reason"]) == exc.key for f in state.get("failed", [])):
            (out / state["file"]).unlink(missing_ok=True)
            state_file.unlink()
            dropped += 1
    ids = {i for i, _ in exc.examples}
    path_of = {i: p for s in shards for i, p in zip(s.frame["id"], s.frame["path"], strict=True) if i in ids}
    raise UserError(f"{out}: {exc.describe(path_of)}. No manifest.json was written: fix the input and run the "
                    f"same command again ({dropped} finished shard(s) holding such failures were removed so that "
                    "they are written again)")


def _write_folder(out: Path, plan: Plan, shards: list[ShardPlan], head: dict, meta: dict, *, image_size: int,
                  quality: int, workers: int, worker_index: int, num_workers: int, progress: bool,
                  desc: str) -> dict:
    """Write ``shards`` of ``plan`` (or this worker's share of them) into one dataset folder; its manifest."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan, head["settings"], head.get("parts"))
    mine = [s for k, s in enumerate(shards) if k % num_workers == worker_index]
    states = {s.name: st for s in mine if (st := _finished_state(out, s.name, plan.fingerprint))}
    todo = [s for s in mine if s.name not in states]
    watch = FailureWatch()
    for st in states.values():
        watch.add(st["planned"], st["failed"])
    bar = tqdm(total=sum(len(s.frame) for s in mine), initial=sum(st["planned"] for st in states.values()),
               unit="img", desc=desc, disable=not progress)
    tripped = _tripped(watch)
    run = _run_shards(out, plan.fingerprint, todo if not tripped else [], image_size, quality,
                      workers if todo else 1, bar)
    try:
        for st in run:
            states[st["file"]] = st
            watch.add(st["planned"], st["failed"])
            if tripped := _tripped(watch):
                break
    finally:
        run.close()  # on a break, the shards in flight finish (and are judged by _stop) before it returns
        bar.close()
    if tripped or (tripped := _tripped(watch, final=True)):
        _stop(out, tripped, mine)
    lm_ids = plan.label_map["landmark_id"].astype(int).tolist()
    mf.write_atomic(out / mf.LABEL_MAP, plan.label_map[gld.LABEL_MAP_COLUMNS].to_csv(index=False).encode())
    mf.write_atomic(out / mf.DATASET_METADATA, mf.dumps(meta))
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
    result["_run"] = log | {"folder_bytes": folder_bytes(out, result)}
    return result


def folder_bytes(out: Path, manifest: dict) -> int:
    """What ``kaggle datasets create -p out`` uploads: the shards listed plus the three metadata files."""
    files = [out / name for name in (mf.MANIFEST, mf.LABEL_MAP, mf.DATASET_METADATA)]
    return sum(s["bytes"] for s in manifest["shards"]) + sum(f.stat().st_size for f in files if f.is_file())


def _over_cap(results: list[tuple[str, dict]], max_part_gb: float) -> None:
    over = [(where, r["_run"]["folder_bytes"]) for where, r in results
            if r["_run"]["folder_bytes"] > max_part_gb * GB and (r.get("joined") or "partition" not in r)]
    if over:
        raise UserError("; ".join(f"{where} holds {human(b)}" for where, b in over)
                        + f", over --max-part-gb {max_part_gb:g}: more than the size model planned. The shards are "
                        "complete (verify passes), but a Kaggle kernel keeps at most 20 GB of output: check with "
                        "`write --estimate` and rebuild into a new folder with the --max-part-gb it suggests")


def write_dataset(data_dir, out_dir, *, outliers=None, image_size: int = 512, quality: int = 90,
                  shard_mb: float = 100, val_fraction: float = 0.02, seed: int = 0, workers: int | None = None,
                  worker_index: int = 0, num_workers: int = 1, dataset_id: str | None = None,
                  max_part_gb: float = DEFAULT_MAX_PART_GB, part: int | None = None, progress: bool = True) -> dict:
    """Build (or finish building) the shard folder, or its parts; return the manifest, or the parts' manifests.

    Unsplit: the manifest (or this worker's share of it). Split: ``{"parts": parts.json's
    document, "written_parts": [the manifest of each part written now]}``.
    """
    check_settings(image_size, quality, shard_mb, val_fraction, max_part_gb)
    checks = [(num_workers >= 1 and 0 <= worker_index < num_workers,
               f"--worker-index {worker_index} must be in 0..--num-workers-1 ({num_workers})"),
              (part is None or part >= 1, f"--part {part} must be 1 or more")]
    for ok, why in checks:
        if not ok:
            raise UserError(why)
    out = Path(out_dir)
    if outliers and not Path(outliers).is_file():
        raise gld.GLDError(f"{outliers}: outliers file not found")
    settings = {"image_size": image_size, "quality": quality, "shard_mb": shard_mb, "val_fraction": val_fraction,
                "seed": seed, "outliers_sha256": file_sha256(outliers) if outliers else None}
    plan = make_plan(data_dir, outliers=outliers, image_size=image_size, quality=quality, shard_mb=shard_mb,
                     val_fraction=val_fraction, seed=seed)
    settings["source"] = plan.source.name
    groups = split_parts(plan.shards, max_part_gb)
    owner, base = dataset_ref(dataset_id, image_size, len(groups))
    if part is not None and part > len(groups):
        raise UserError(f"--part {part}: this build has {len(groups)} part(s) at --max-part-gb {max_part_gb:g}")
    kw = dict(image_size=image_size, quality=quality, workers=max(1, workers or len(os.sched_getaffinity(0))),
              worker_index=worker_index, num_workers=num_workers, progress=progress)
    if len(groups) == 1:
        if (out / PARTS_JSON).is_file():
            raise UserError(f"{out}: holds the parts of a split build ({PARTS_JSON}); write to a new --out folder")
        result = _write_folder(out, plan, plan.shards, _head(plan, settings),
                               dataset_metadata(owner, base, image_size), desc="write", **kw)
        _over_cap([(str(out), result)], max_part_gb)
        return result
    if (mf.build_dir(out) / "plan.json").is_file():
        raise UserError(f"{out}: holds an unsplit build, but this one is split into {len(groups)} parts at "
                        f"--max-part-gb {max_part_gb:g}; write to a new --out folder")
    doc = parts_doc(plan, groups, settings=settings, max_part_gb=max_part_gb, owner=owner, base=base)
    out.mkdir(parents=True, exist_ok=True)
    mf.write_atomic(out / PARTS_JSON, mf.dumps(doc))
    written = []
    for entry, group in zip(doc["table"], groups, strict=True):
        if part is None or entry["part"] == part:
            k = entry["part"]
            meta = dataset_metadata(owner, base, image_size, (k, doc["count"]))
            written.append(_write_folder(out / entry["folder"], plan, group, _head(plan, settings, entry, doc), meta,
                                         desc=f"part {k}/{doc['count']}", **kw))
    _over_cap([(r["parts"]["table"][r["parts"]["part"] - 1]["folder"], r) for r in written], max_part_gb)
    return {"parts": doc, "written_parts": written}


def summary(result: dict, out_dir) -> str:
    if "written_parts" in result:
        doc = result["parts"]
        lines = []
        for m in result["written_parts"]:
            folder = doc["table"][m["parts"]["part"] - 1]["folder"]
            size = f"; {human(m['_run']['folder_bytes'])}" if m.get("joined") or "partition" not in m else ""
            lines.append(f"part {m['parts']['part']}/{doc['count']}: " + summary(m, Path(out_dir) / folder) + size)
        lines.append(f"{doc['count']} parts of at most {doc['max_part_gb']:g} GB in {out_dir} (table in {PARTS_JSON}); "
                     f"upload each part folder: kaggle datasets create -p {Path(out_dir) / doc['table'][0]['folder']}")
        return "\n".join(lines)
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
    parser.add_argument("--out", help="output folder for shards, label_map.csv and manifest.json (or for the parts)")
    parser.add_argument("--outliers", help="clean/outliers.csv (id,landmark_id,cluster,reason): images to leave out")
    parser.add_argument("--image-size", type=int, default=512, help="longest side in pixels; never upscaled")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality for re-encoded images")
    parser.add_argument("--shard-mb", type=float, default=100, help="approximate shard size in MB")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="validation share of each class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-part-gb", type=float, default=DEFAULT_MAX_PART_GB,
                        help="split into Kaggle datasets OUT/<slug>-part-<k> of at most this many GB (10^9 bytes) "
                             "when the build is larger (default: 19, so one kernel's output fits)")
    parser.add_argument("--part", type=int, help="write only part k (1..P) of a split build: one kernel run each")
    parser.add_argument("--estimate", action="store_true",
                        help="write nothing: prepare a random sample of the images and predict the shard bytes "
                             "and the parts --max-part-gb needs")
    parser.add_argument("--estimate-sample", type=int, default=500,
                        help="images --estimate prepares (at least 500; all when there are fewer)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--worker-index", type=int, default=0, help="this machine's share, 0..num-workers-1")
    parser.add_argument("--num-workers", type=int, default=1, help="machines sharing the build (of each part)")
    parser.add_argument("--dataset-id", help="Kaggle dataset OWNER/SLUG for dataset-metadata.json "
                                             "(parts: OWNER/SLUG-part-<k>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.estimate:
        from tfrec_builder.estimate import estimate_build, format_estimate

        if args.estimate_sample < 500:
            raise UserError(f"--estimate-sample {args.estimate_sample}: use at least 500 images")
        est = estimate_build(args.data, outliers=args.outliers, image_size=args.image_size, quality=args.quality,
                             shard_mb=args.shard_mb, val_fraction=args.val_fraction, seed=args.seed,
                             max_part_gb=args.max_part_gb, sample=args.estimate_sample, progress=not args.no_progress)
        print(format_estimate(est))
        return 0
    if not args.out:
        raise UserError("--out is required (only --estimate writes nothing)")
    result = write_dataset(args.data, args.out, outliers=args.outliers, image_size=args.image_size,
                           quality=args.quality, shard_mb=args.shard_mb, val_fraction=args.val_fraction,
                           seed=args.seed, workers=args.workers, worker_index=args.worker_index,
                           num_workers=args.num_workers, dataset_id=args.dataset_id, max_part_gb=args.max_part_gb,
                           part=args.part, progress=not args.no_progress)
    print(summary(result, args.out))
    joined = all(m.get("joined") for m in result.get("written_parts", [result]))
    if args.num_workers > 1 and not joined:
        print(f"join the {args.num_workers} workers' shares with: tfrec-builder merge {args.out} [OTHER_DIRS…] "
              f"--out FOLDER" + (" (for each part folder)" if "written_parts" in result else ""))
    return 0
