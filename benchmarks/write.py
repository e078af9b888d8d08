"""Benchmark: ``tfrec-builder write`` images/s with and without resizing, against merely reading the files.

The input is the 13 real GLDv2 test photos (489–800 px, 31–129 KB) each copied
under many ids into a GLDv2 folder. All rates are measured in one run. Before
each timed row the input files are evicted from the page cache
(``posix_fadvise(DONTNEED)`` on our files only), so the bare read (open + read
of every file, one process) and every write read from disk; the warm-cache read
is shown too. Then ``write_dataset`` with ``--image-size 800`` (every file
already fits: the copy path) and ``--image-size 256`` (every file is decoded,
resized and re-encoded), each with 1 and with 2 worker processes. One worker
runs in this process; two workers are a spawned pool whose start-up is measured
separately and shown both included and subtracted. TensorFlow (which the
writing process needs for ``tf.io.TFRecordWriter``) is imported before timing;
its import time is printed. Each write row is the best of ``--repeat`` runs,
because the shared machine's load varies from second to second.

    python benchmarks/write.py [--copies 100] [--realdata DIR]
"""

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle import gld
from tfrec_builder.plan import make_plan
from tfrec_builder.write import write_dataset

# shared/ lies beside the checkout.
REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "gldv2-test-images"


def make_folder(root: Path, sources: list[Path], copies: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows, paths = [], []
    for k, src in enumerate(sources):
        for _ in range(copies):
            image_id = "".join(rng.choice(list("0123456789abcdef"), 16))
            dst = gld.image_path(root, "train", image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            rows.append((image_id, 100 + k))
            paths.append(str(dst))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    return paths


def read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            total += len(fh.read())
    return total


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(_):
    import tfrec_builder.write  # noqa: F401  (what a write worker imports: TensorFlow, OpenCV)

    return os.getpid()


def pool_startup(workers: int) -> float:
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_warm, range(workers))
    return time.perf_counter() - t0


def timed_write(data: Path, out: Path, paths: list[str], repeat: int, **kw) -> tuple[float, dict]:
    best = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        evict(paths)
        t0 = time.perf_counter()
        m = write_dataset(data, out, val_fraction=0.02, progress=False, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=100, help="ids per real photo")
    parser.add_argument("--realdata", default=str(REAL))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import tensorflow  # noqa: F401

    t_tf = time.perf_counter() - t0
    sources = sorted(Path(args.realdata).glob("*.jpg"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_folder(root / "gld", sources, args.copies)
        n = len(paths)
        evict(paths)
        t0 = time.perf_counter()
        nbytes = read_all(paths)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_all(paths)
        t_warm = time.perf_counter() - t0
        startup = pool_startup(2)
        t0 = time.perf_counter()
        make_plan(root / "gld", outliers=None, image_size=800, quality=90, shard_mb=8, val_fraction=0.02, seed=0)
        t_plan = time.perf_counter() - t0
        rows = []
        for label, size in (("no resize (copy)", 800), ("resize to 256", 256)):
            # Shards of ~8 MB so there are plenty for two workers to share.
            t1, m1 = timed_write(root / "gld", root / "o1", paths, args.repeat, image_size=size, shard_mb=8,
                                 workers=1)
            t2, m2 = timed_write(root / "gld", root / "o2", paths, args.repeat, image_size=size, shard_mb=8,
                                 workers=2)
            assert sum(m1["written"].values()) == sum(m2["written"].values()) == n
            rows.append((label, t1, t2, m1["actions"]))
    print(f"{n} images, {nbytes / 1e6:.1f} MB; spawned 2-process pool start-up {startup:.2f} s; "
          f"TensorFlow import {t_tf:.2f} s (not timed below)")
    print(f"{'bare read, from disk':<22} {t_read:7.2f} s  {n / t_read:9.0f} img/s")
    print(f"{'bare read, warm cache':<22} {t_warm:7.2f} s  {n / t_warm:9.0f} img/s")
    print(f"{'plan only (in writes)':<22} {t_plan:7.2f} s  (index, outliers, split, stat of every file)")
    for label, t1, t2, actions in rows:
        adj = max(t2 - startup, 1e-9)
        print(f"{label:<22} 1 worker {t1:7.2f} s {n / t1:7.0f} img/s = {t_read / t1:.2f}x read | "
              f"2 workers {t2:6.2f} s ({n / t2:5.0f} img/s, {t1 / t2:.2f}x one); "
              f"start-up excluded {t1 / adj:.2f}x one, {t_read / adj:.2f}x read  {actions}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
