"""Benchmark of `tfrec-builder clean` at GLDv2 scale: 81,313 classes, ~1.58M 512-d embeddings, planted outliers.

Class sizes follow the poster's Table 2 (19,693 classes with K > 20, 16,974 with
10 < K <= 20, 20,375 with 5 < K <= 10, 24,271 with K <= 5) with a heavy tail up
to --max-class images. Each class is one tight cluster around its own random
direction (pairwise cosine ~0.8); a fraction of the images in classes of >= 3 are
planted outliers (random directions), listed in noise.csv, so the real
`clean_dataset` reports their recall and precision. Prints wall time, peak
resident memory (parent and workers, sampled from /proc), and, for single
classes of growing size, scikit-learn DBSCAN against the blocked implementation
side by side (time and peak traced memory), which is how the cost grows with
the largest class.

    python benchmarks/clean.py                 # full GLDv2 shape
    python benchmarks/clean.py --scale 0.1     # a tenth of the classes
    python benchmarks/clean.py --dim 2560      # EfficientNet-B7's width (an 8 GB store at full scale)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landmark_kaggle.data.embstore import StoreWriter  # noqa: E402
from tfrec_builder import cluster  # noqa: E402
from tfrec_builder.clean import clean_dataset  # noqa: E402

TABLE2 = [(21, None, 19693), (11, 20, 16974), (6, 10, 20375), (1, 5, 24271)]
GLDV2_IMAGES = 1_580_470
DIM = 512


def class_sizes(scale: float, max_class: int, rng: np.random.Generator) -> np.ndarray:
    sizes = []
    # The bounded buckets first: the open K > 20 bucket takes the images left to reach GLDv2's total.
    for lo, hi, count in TABLE2[::-1]:
        n = max(1, round(count * scale))
        if hi is not None:
            sizes.append(rng.integers(lo, hi + 1, size=n))
            continue
        big_total = int(GLDV2_IMAGES * scale) - int(sum(s.sum() for s in sizes))
        tail = rng.pareto(1.1, size=n)
        # Scale the Pareto tail so the whole table sums to GLDv2's image count.
        a, b = 0.0, 1000.0
        for _ in range(60):
            mid = (a + b) / 2
            total = np.minimum(lo + np.floor(tail * mid), max_class).sum()
            a, b = (mid, b) if total < big_total else (a, mid)
        big = np.minimum(lo + np.floor(tail * a), max_class).astype(np.int64)
        big[np.argmax(big)] = max_class  # the largest class is exactly --max-class
        sizes.append(big)
    return np.concatenate(sizes)


def make_store(root: Path, sizes: np.ndarray, outlier_fraction: float, rng: np.random.Generator,
               dim: int = DIM) -> int:
    total = int(sizes.sum())
    lids = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(total)  # train.csv is not grouped by class
    ids = np.array([f"{i:016x}" for i in rng.choice(2**62, size=total, replace=False)])
    pd.DataFrame({"id": ids, "landmark_id": lids[order]}).to_csv(root / "train.csv", index=False)
    writer = StoreWriter(root / "store", ids, {"backend": "synthetic", "weights_sha256": "none", "image_size": 0},
                         dim, chunk_size=1 << 16)
    # The same pairwise cosine (~0.8) in any width: the per-axis noise shrinks as 1/sqrt(dim).
    sigma = 0.022 * (DIM / dim) ** 0.5
    pos = np.empty(total, dtype=np.int64)
    pos[order] = np.arange(total)  # store row of the j-th image in class order
    noisy, start = [], 0
    for n in sizes:
        center = rng.normal(size=dim)
        center /= np.linalg.norm(center)
        x = center + sigma * rng.normal(size=(n, dim))
        if n >= 3:
            k = rng.binomial(n, outlier_fraction)
            bad = rng.choice(n, size=min(k, n // 2), replace=False)
            x[bad] = rng.normal(size=(len(bad), dim))
            noisy.extend(ids[pos[start + bad]])
        writer.matrix[pos[start:start + n]] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        start += n
    writer.matrix.flush()
    for k in writer.pending():
        # Rows were scattered in above; mark every chunk finished without rewriting it.
        writer.write_chunk(k, np.asarray(writer.matrix[writer.chunk_rows(k)]))
    writer.finalize()
    pd.DataFrame({"id": noisy}).to_csv(root / "noise.csv", index=False)
    return len(noisy)


class RSSPeak:
    """Peak of the summed and of the largest VmRSS over this process and its descendants."""

    def __init__(self):
        self.sum = self.max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        tree, frontier = [os.getpid()], [os.getpid()]
        while frontier:
            frontier = [p for p, pp in parents.items() if pp in frontier]
            tree += frontier
        return tree

    def _loop(self):
        while not self._stop.is_set():
            rss = []
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss.append(int(line.split()[1]) * 1024)
                except OSError:
                    pass
            self.sum, self.max = max(self.sum, sum(rss)), max(self.max, max(rss, default=0))
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def scaling(sizes: list[int], sklearn_upto: int) -> None:
    print(f"\n{'class size':>10} {'blocked s':>10} {'blocked MB':>11} {'sklearn s':>10} {'sklearn MB':>11} {'same':>5}")
    rng = np.random.default_rng(1)
    for n in sizes:
        center = rng.normal(size=DIM)
        x = center / np.linalg.norm(center) + 0.022 * rng.normal(size=(n, DIM))
        x = cluster.prepare(x, "cosine")
        row, ref, same = [], None, False
        for use_sklearn in (False, True):
            if use_sklearn and n > sklearn_upto:
                row += [float("nan"), float("nan")]
                continue
            tracemalloc.start()
            t = time.perf_counter()
            if use_sklearn:
                from sklearn.cluster import DBSCAN

                labels = DBSCAN(eps=0.33, min_samples=2, metric="cosine", algorithm="brute").fit(x).labels_
            else:
                labels = cluster.blocked_dbscan(x, 0.33, 2, "cosine")
            row += [time.perf_counter() - t, tracemalloc.get_traced_memory()[1] / 2**20]
            tracemalloc.stop()
            if use_sklearn:
                same = bool(np.array_equal(labels, ref))
            else:
                ref = labels
        same = "yes" if n <= sklearn_upto and same else "-"
        print(f"{n:>10} {row[0]:>10.2f} {row[1]:>11.0f} {row[2]:>10.2f} {row[3]:>11.0f} {same:>5}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of GLDv2's classes (1.0 = 81,313)")
    parser.add_argument("--max-class", type=int, default=6272, help="size of the largest class (GLDv2: ~6.3K)")
    parser.add_argument("--outliers", type=float, default=0.065, help="planted outlier fraction (~100K of 1.58M)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--scaling", default="1000,2500,5000,10000,20000", help="class sizes for the scaling table")
    parser.add_argument("--sklearn-upto", type=int, default=5000)
    parser.add_argument("--keep", default=None, help="keep the generated data in this folder")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding width (512; EfficientNet-B7: 2560)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    root = Path(args.keep or tempfile.mkdtemp(prefix="clean-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    sizes = class_sizes(args.scale, args.max_class, rng)
    t = time.perf_counter()
    planted = make_store(root, sizes, args.outliers, rng, args.dim)
    print(f"generated {len(sizes)} classes, {sizes.sum()} embeddings x {args.dim} (largest class {sizes.max()}), "
          f"{planted} planted outliers in {time.perf_counter() - t:.0f}s")
    with RSSPeak() as peak:
        t = time.perf_counter()
        report = clean_dataset(root / "store", root, root / "clean", sheets=0, jobs=args.jobs)
        wall = time.perf_counter() - t
    noise = report["noise"]
    print(f"clean: {wall:.0f}s wall on {args.jobs} jobs; peak RSS {peak.sum / 2**30:.2f} GiB summed over "
          f"processes ({peak.max / 2**30:.2f} GiB largest process); removed {report['images']['removed']}; "
          f"planted-outlier recall {noise['recall']:.4f}, precision {noise['precision']:.4f}")
    scaling([int(s) for s in args.scaling.split(",") if s], args.sklearn_upto)
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
