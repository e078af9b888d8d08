"""Join the shards of a partitioned build (``write --worker-index i --num-workers n``) into one dataset.

Every worker computes the same plan and writes every n-th shard, plus its part
of the manifest in ``.build/manifest-part-i-of-n.json``. ``merge`` checks that
the parts come from one plan and that all n are there, gathers the shards into
one folder (copying from other folders through a temporary name, hash checked)
and writes the joined ``manifest.json`` — the same bytes a single-worker build
writes. When all workers wrote into one shared folder, ``write`` itself joins
the parts as the last one finishes.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from landmark_kaggle.data import gld
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import file_sha256
from tfrec_builder import manifest as mf


def find_parts(dirs: list[Path]) -> list[tuple[Path, dict]]:
    found = []
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: folder not found")
        for path in sorted(mf.build_dir(d).glob("manifest-part-*-of-*.json")):
            found.append((d, mf.read_json(path)))
    if not found:
        raise UserError(f"no .build/manifest-part-*.json in {', '.join(map(str, dirs))}: were they written with "
                        "--num-workers?")
    return found


def check_parts(found: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """The parts ordered by worker index; raise naming what is missing or inconsistent."""
    plans = {p["plan"] for _, p in found}
    if len(plans) != 1:
        raise UserError(f"the parts come from {len(plans)} different plans (inputs or settings differ): "
                        + "; ".join(f"{d}: worker {p['partition']['worker_index']} plan {p['plan'][:12]}"
                                    for d, p in found))
    n = found[0][1]["partition"]["num_workers"]
    by_index: dict[int, tuple[Path, dict]] = {}
    for d, p in found:
        part = p["partition"]
        if part["num_workers"] != n:
            raise UserError(f"{d}: a part of {part['num_workers']} workers mixed with parts of {n}")
        by_index.setdefault(part["worker_index"], (d, p))
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise UserError(f"missing part(s) of worker(s) {', '.join(map(str, missing))} of {n} in "
                        f"{', '.join(dict.fromkeys(str(d) for d, _ in found))}; run `tfrec-builder write … "
                        f"--worker-index i --num-workers {n}` for them and merge again")
    return [by_index[i] for i in range(n)]


def _bring(src: Path, dst_dir: Path, entry: dict) -> None:
    dst = dst_dir / entry["file"]
    if (dst.is_file() and dst.stat().st_size == entry["bytes"]
            and (src.resolve() == dst.resolve() or file_sha256(dst) == entry["sha256"])):
        return
    if not src.is_file():
        raise UserError(f"{src}: shard listed in its worker's part but missing")
    tmp = mf.build_dir(dst_dir) / "tmp" / f"{entry['file']}.merge.{os.getpid()}.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, tmp)
    if file_sha256(tmp) != entry["sha256"]:
        tmp.unlink()
        raise UserError(f"{src}: sha256 does not match its worker's manifest part; rerun that worker")
    os.replace(tmp, dst)


def merge_parts(dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> dict:
    """Join worker parts found in ``dirs`` into ``out_dir`` (default: the only input folder); return the manifest."""
    dirs = [Path(d) for d in dirs]
    if out_dir is None:
        if len(dirs) != 1:
            raise UserError("several input folders: say where the joined dataset goes with --out")
        out_dir = dirs[0]
    out = Path(out_dir)
    parts = check_parts(find_parts(dirs))
    first_dir = parts[0][0]
    label_bytes = (first_dir / mf.LABEL_MAP).read_bytes()
    for d, _ in parts:
        if (d / mf.LABEL_MAP).read_bytes() != label_bytes:
            raise UserError(f"{d / mf.LABEL_MAP}: differs from {first_dir / mf.LABEL_MAP}")
    out.mkdir(parents=True, exist_ok=True)
    for d, p in parts:
        for entry in p["shards"]:
            _bring(d / entry["file"], out, entry)
        if d != out:
            mf.write_atomic(mf.part_path(out, p["partition"]["worker_index"], p["partition"]["num_workers"]),
                            mf.dumps(p))
    mf.write_atomic(out / mf.LABEL_MAP, label_bytes)
    mf.write_atomic(out / mf.DATASET_METADATA, (first_dir / mf.DATASET_METADATA).read_bytes())
    plan = first_dir / mf.BUILD_DIR / "plan.json"
    if first_dir != out and plan.is_file():
        mf.write_atomic(mf.build_dir(out) / "plan.json", plan.read_bytes())
    landmark_ids = gld.read_label_map(out / mf.LABEL_MAP)["landmark_id"].astype(int).tolist()
    manifest = mf.join([p for _, p in parts], landmark_ids)
    mf.write_atomic(out / mf.MANIFEST, mf.dumps(manifest))
    return manifest


def all_parts_present(out_dir: str | os.PathLike, num_workers: int) -> bool:
    return all(mf.part_path(out_dir, i, num_workers).is_file() for i in range(num_workers))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", help="folder(s) the workers wrote into")
    parser.add_argument("--out", help="joined dataset folder (default: the input folder, when there is one)")


def run(args: argparse.Namespace) -> int:
    m = merge_parts(args.dirs, args.out)
    out = args.out or args.dirs[0]
    print(f"merged {m['planned']['train']['shards'] + m['planned']['validation']['shards']} shards into {out}: "
          f"{m['written']['train']} train + {m['written']['validation']} validation, removed {m['removed']}, "
          f"failed {m['failed']}, input {m['input']}; check it with: tfrec-builder verify {out}")
    return 0
