"""Benchmark: ``tfrec-builder write`` images/s with and without resizing, against merely reading the files.

The input is the 13 real GLDv2 test photos (489–800 px, 31–129 KB) each copied
under many ids into a GLDv2 folder. All rates are measured in one run. Before
each timed row the input files are evicted from the page cache
(``posix_fadvise(DONTNEED)`` on our files only), so the bare reads and every
write read from disk; the warm-cache read is shown too. The bare read is
measured three ways, open + read of every file in one thread, in two threads,
and in one thread with the kernel told to read ``HINT_WINDOW`` files ahead (how
``write`` reads), and the fastest is the baseline the writes are held to.
Then ``write_dataset`` with ``--image-size 800`` (every file already fits: the
copy path) and ``--image-size 256`` (every file is decoded, resized and
re-encoded), each with 1 and with 2 worker processes. One worker runs in this
process; two workers are a spawned pool whose start-up is measured separately
and shown both included and subtracted. Each write row is the best of
``--repeat`` runs, because a shared machine's load varies from second to
second.

    python benchmarks/write.py [--copies 100] [--realdata DIR]
"""

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from landmark_kaggle.data import gld

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import REALDATA as REAL  # noqa: E402
from helpers import real_folder  # noqa: E402

from tfrec_builder.plan import make_plan
from tfrec_builder.shard import HINT_WINDOW, read_ahead
from tfrec_builder.tfrecord import google_crc32c
from tfrec_builder.write import write_dataset

# shared/ lies beside the checkout.


def make_folder(root: Path, sources: list[Path], copies: int) -> list[str]:
    """The real photos under random ids (tests' ``helpers.real_folder``); returns the image paths."""
    real_folder(root, copies, sources, seed=0, first_landmark=100)
    ids = pd.read_csv(root / "train.csv", dtype={"id": str})["id"]
    return [str(gld.image_path(root, "train", i)) for i in ids]


def read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            total += len(fh.read())
    return total


def read_threaded(paths: list[str], threads: int, chunk: int = 32) -> int:
    """Merely read the files, chunk by chunk, in ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(read_all, chunks))


def read_hinted(paths: list[str]) -> int:
    """Merely read the files in turn with the kernel told to read ahead: write's own reading without the work."""
    return sum(len(d) for d in read_ahead(paths))


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(_):
    import tfrec_builder.shard  # noqa: F401  (all that a write worker imports: OpenCV, NumPy)

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
    sources = sorted(Path(args.realdata).glob("*.jpg"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_folder(root / "gld", sources, args.copies)
        n = len(paths)
        evict(paths)
        t0 = time.perf_counter()
        nbytes = read_all(paths)
        t_read1 = time.perf_counter() - t0
        evict(paths)
        t0 = time.perf_counter()
        read_threaded(paths, 2)
        t_read_mt = time.perf_counter() - t0
        evict(paths)
        t0 = time.perf_counter()
        read_hinted(paths)
        t_read_hint = time.perf_counter() - t0
        t_read = min(t_read1, t_read_mt, t_read_hint)
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
          f"CRC-32C implementation: {google_crc32c.implementation}")
    print(f"{'bare read, 1 thread':<22} {t_read1:7.2f} s  {n / t_read1:9.0f} img/s")
    print(f"{'bare read, 2 threads':<22} {t_read_mt:7.2f} s  {n / t_read_mt:9.0f} img/s")
    print(f"{'bare read, hinted':<22} {t_read_hint:7.2f} s  {n / t_read_hint:9.0f} img/s  "
          f"(1 thread, posix_fadvise WILLNEED {HINT_WINDOW} files ahead; baseline: the fastest read, "
          f"{n / t_read:.0f} img/s)")
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
