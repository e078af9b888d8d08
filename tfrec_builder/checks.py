"""One shard folder checked against its manifest by reading every record: counts, sha256, labels, decodable images.

Each shard is hashed and read through TensorFlow's own TFRecord reader (which
checks each record's CRC); each record is parsed with the plain protobuf
``tf.train.Example`` API, its image decoded with ``tf.io.decode_jpeg`` (the
decoder training uses) and compared with the stored height and width, its
label looked up in ``label_map.csv``. Problems are lines naming the shard and
record. ``verify`` (one folder) and ``verify_parts`` (a split build) both
build on these checks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from landmark_kaggle.data import gld
from landmark_kaggle.data.records import SPLITS, parse_shard_name
from landmark_kaggle.fileio import file_sha256
from tfrec_builder import manifest as mf

_ID = re.compile(r"^[0-9a-f]{16}$")


def _feature(example, key: str, kind: str):
    values = getattr(example.features.feature[key], kind).value
    return values[0] if len(values) == 1 else None


_DECODE = []


def _decoder():
    """One traced JPEG decoder per process (a new tf.function per shard would retrace each time)."""
    import tensorflow as tf

    if not _DECODE:
        _DECODE.append(tf.function(lambda b: tf.shape(tf.io.decode_jpeg(b, channels=3)),
                                   input_signature=[tf.TensorSpec([], tf.string)]))
    return _DECODE[0]


def verify_shard(task: tuple) -> tuple[list[str], list[str]]:
    """(problems, ids) for one shard file; runs in a worker process."""
    import tensorflow as tf

    path, entry, label_of = task
    name = Path(path).name
    problems: list[str] = []
    ids: list[str] = []
    if not Path(path).is_file():
        return [f"{name}: listed in manifest.json but missing"], ids
    size = Path(path).stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{name}: {size} bytes, manifest.json says {entry['bytes']}")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        problems.append(f"{name}: sha256 {digest[:12]}… does not match manifest.json ({entry['sha256'][:12]}…)")
    decode = _decoder()
    count = 0
    try:
        for count, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator(), start=1):
            where = f"{name}: record {count}"
            try:
                ex = tf.train.Example.FromString(raw)
            except Exception as exc:
                problems.append(f"{where}: not a tf.train.Example ({exc})")
                continue
            image_id = _feature(ex, "image/id", "bytes_list")
            image_id = image_id.decode("ascii", "replace") if image_id is not None else None
            if image_id is None or not _ID.match(image_id):
                problems.append(f"{where}: image/id {image_id!r} is not 16 lowercase hex characters")
            else:
                ids.append(image_id)
                where += f" (id {image_id})"
            label = _feature(ex, "image/class/label", "int64_list")
            landmark = _feature(ex, "image/class/landmark_id", "int64_list")
            if label is None or not 0 <= label < len(label_of):
                problems.append(f"{where}: label {label} is not in label_map.csv (0..{len(label_of) - 1})")
            elif landmark != label_of[label]:
                problems.append(f"{where}: landmark_id {landmark} but label_map.csv maps label {label} "
                                f"to {label_of[label]}")
            if _feature(ex, "image/format", "bytes_list") != b"JPEG":
                problems.append(f"{where}: image/format is not JPEG")
            encoded = _feature(ex, "image/encoded", "bytes_list")
            try:
                h, w, _ = (int(v) for v in decode(tf.constant(encoded or b"")).numpy())
            except (tf.errors.InvalidArgumentError, ValueError) as exc:
                problems.append(f"{where}: image does not decode ({str(exc).splitlines()[0][:120]})")
                continue
            stored = (_feature(ex, "image/height", "int64_list"), _feature(ex, "image/width", "int64_list"))
            if stored != (h, w):
                problems.append(f"{where}: decodes to {h}x{w} (HxW) but records {stored[0]}x{stored[1]}")
    except tf.errors.OpError as exc:
        problems.append(f"{name}: unreadable after record {count} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]})")
    if count != entry["count"]:
        problems.append(f"{name}: {count} records, manifest.json says {entry['count']}")
    return problems, ids


def read_manifest(out: Path) -> tuple[dict | None, list[str]]:
    try:
        manifest = mf.read_json(out / mf.MANIFEST)
    except FileNotFoundError:
        return None, [f"{out / mf.MANIFEST}: missing (an unfinished or partitioned build? run write again, or merge)"]
    except ValueError as exc:
        return None, [f"{out / mf.MANIFEST}: not valid JSON ({exc})"]
    if manifest.get("format") != mf.FORMAT:
        return None, [f"{out / mf.MANIFEST}: format {manifest.get('format')!r}, expected {mf.FORMAT!r}"]
    return manifest, []


def _shard_set_problems(manifest: dict) -> list[str]:
    """The shards a folder must hold: 0..n-1 of each split, or, for a part, exactly its row of the part table."""
    entries = manifest["shards"]
    if "parts" not in manifest:
        problems = []
        for split in SPLITS:
            want = manifest["planned"][split]["shards"]
            if sorted(e["index"] for e in entries if e["split"] == split) != list(range(want)):
                problems.append(f"manifest.json: {split} shards are not exactly 0..{want - 1}")
        return problems
    row = manifest["parts"]["table"][manifest["parts"]["part"] - 1]
    problems = [] if sorted(e["file"] for e in entries) == sorted(row["shards"]) else [
        f"manifest.json: the shards listed are not part {row['part']}'s shards in the part table"]
    if (manifest["input"], manifest["removed"]) != (row["input"], row["removed"]):
        problems.append(f"manifest.json: input {manifest['input']}, removed {manifest['removed']}, but the part "
                        f"table gives part {row['part']} input {row['input']}, removed {row['removed']}")
    return problems


def check_folder(out: Path, manifest: dict, *, workers: int | None, progress: bool) -> tuple[list[str], Counter]:
    """(problems, how often each id was found) for one dataset folder and its manifest."""
    problems: list[str] = []
    try:
        label_map = gld.read_label_map(out / mf.LABEL_MAP)
        label_of = label_map["landmark_id"].astype(int).tolist()
    except gld.GLDError as exc:
        problems.append(str(exc))
        label_of = []
    if label_of and len(label_of) != manifest["num_classes"]:
        problems.append(f"{mf.LABEL_MAP}: {len(label_of)} classes, manifest.json says {manifest['num_classes']}")
    written = manifest["written"]
    total = sum(written.values()) + manifest["removed"] + manifest["failed"]
    if total != manifest["input"]:
        problems.append(f"manifest.json: written {sum(written.values())} + removed {manifest['removed']} + failed "
                        f"{manifest['failed']} = {total}, but input is {manifest['input']}")
    if manifest["failed"] != len(manifest["failed_images"]):
        problems.append(f"manifest.json: failed {manifest['failed']} but {len(manifest['failed_images'])} listed")
    entries = manifest["shards"]
    for split in SPLITS:
        listed = [e for e in entries if e["split"] == split]
        if sum(e["count"] for e in listed) != written[split]:
            problems.append(f"manifest.json: {split} shards hold {sum(e['count'] for e in listed)} records, "
                            f"written says {written[split]}")
    problems += _shard_set_problems(manifest)
    on_disk = {p.name for p in out.iterdir() if parse_shard_name(p.name)}
    for extra in sorted(on_disk - {e["file"] for e in entries}):
        problems.append(f"{extra}: shard file not listed in manifest.json")
    tasks = [(str(out / e["file"]), e, label_of) for e in entries]
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(tasks) or 1))
    seen: Counter[str] = Counter()
    bar = tqdm(total=sum(e["count"] for e in entries), unit="img", desc=f"verify {out.name}", disable=not progress)
    if workers == 1:
        results = map(verify_shard, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(verify_shard, tasks)
    try:
        for (found, ids), entry in zip(results, entries, strict=True):
            problems.extend(found)
            seen.update(ids)
            bar.update(entry["count"])
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return problems, seen


def id_problems(seen: Counter, failed_ids: set[str]) -> list[str]:
    problems = [f"id {image_id}: appears in {n} records" for image_id, n in sorted(seen.items()) if n > 1]
    for image_id in sorted(failed_ids & set(seen)):
        problems.append(f"id {image_id}: listed as failed in manifest.json but present in a shard")
    return problems
