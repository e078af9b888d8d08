"""Benchmark: indexing a GLDv2-sized train.csv (1.58M rows, 81,313 classes) against a bare pandas read.

The index validates ids, parses landmark ids, builds the label map and the
image paths with no per-file stat; the baseline is ``pd.read_csv`` of the same
file with no checks at all. Prints both times and the ratio.

    python benchmarks/index.py [--rows 1580470] [--classes 81313]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.data import gld


def make_csv(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 2**63, size=int(rows * 1.01)))[:rows]
    rng.shuffle(ids)
    # A Zipf-like long tail over the classes, as GLDv2's.
    weights = 1.0 / np.arange(1, classes + 1) ** 0.9
    labels = rng.choice(classes, size=rows, p=weights / weights.sum())
    pd.DataFrame({"id": [f"{i:016x}" for i in ids], "landmark_id": labels * 2 + 1}).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_580_470)
    parser.add_argument("--classes", type=int, default=81_313)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_csv(root / "train.csv", args.rows, args.classes)
        t0 = time.perf_counter()
        raw = pd.read_csv(root / "train.csv")
        t_raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = gld.load_train_index(root)
        t_index = time.perf_counter() - t0
    assert len(index) == len(raw) == args.rows
    print(f"rows {args.rows:,}, classes {index.num_classes:,}")
    print(f"pandas read_csv only : {t_raw:6.2f} s")
    print(f"load_train_index     : {t_index:6.2f} s  ({args.rows / t_index:,.0f} rows/s)")
    print(f"ratio index / bare read: {t_index / t_raw:.2f}x")


if __name__ == "__main__":
    main()
