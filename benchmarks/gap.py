"""Time ``global_average_precision`` against a plain Python loop over the same definition, on the same data.

Synthetic but shaped like the competition: N test images with 16-hex ids,
about a third showing one of 81,313 landmarks (a few show two), one prediction
per image for most of them, half of those right, confidences rounded to three
decimals so ties are everywhere. Both implementations score the same arrays in
one run; the script checks they agree to the last digit and prints the ratio.

    python benchmarks/gap.py                # 1,000,000 predictions, the loop on all of them
    python benchmarks/gap.py --loop-subset 200000   # the loop on a prefix, extrapolated linearly

It also reads a written submission.csv of --file-rows rows with ``read_submission``
(every check) beside a bare ``pd.read_csv`` of the same file (no checks).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.evaluate.metrics import GroundTruth, global_average_precision

# The plain-loop GAP is the tests' oracle (tests/helpers.py), so the benchmark times the very code they trust.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import loop_gap  # noqa: E402

from landmark_kaggle.evaluate.submission import read_submission, write_submission

NUM_CLASSES = 81_313


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.array([f"{x:016x}" for x in rng.choice(2**62, size=n, replace=False)], dtype=object)
    true = rng.integers(NUM_CLASSES, size=n)
    shows = rng.random(n) < 0.33
    second = rng.random(n) < 0.02
    solution = {i: ((t, (t + 1) % NUM_CLASSES) if s2 else (t,)) if s else ()
                for i, t, s, s2 in zip(ids.tolist(), true.tolist(), shows.tolist(), second.tolist(), strict=True)}
    predicted = np.where(rng.random(n) < 0.5, true, rng.integers(NUM_CLASSES, size=n))
    lids = np.where(rng.random(n) < 0.95, predicted, -1)
    confs = np.round(rng.random(n), 3)
    return ids, lids, confs, solution


def best_of(repeats: int, fn):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="predictions (default 1,000,000)")
    parser.add_argument("--loop-subset", type=int, default=0,
                        help="time the loop on the first N predictions only and extrapolate linearly")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--file-rows", type=int, default=100_000, help="rows of the submission.csv read test")
    args = parser.parse_args()

    ids, lids, confs, solution = make_data(args.n, args.seed)
    py_ids, py_lids, py_confs = ids.tolist(), lids.tolist(), confs.tolist()
    t_build, truth = best_of(args.repeats, lambda: GroundTruth.from_mapping(solution))
    t_ours, ours = best_of(args.repeats, lambda: global_average_precision(ids, lids, confs, truth))
    t_cold, cold = best_of(args.repeats, lambda: global_average_precision(ids, lids, confs, solution))

    k = args.loop_subset if 0 < args.loop_subset < args.n else args.n
    if k < args.n:
        sub_solution = {i: solution[i] for i in py_ids[:k]}
        t_sub, loop_value = best_of(1, lambda: loop_gap(py_ids[:k], py_lids[:k], py_confs[:k], sub_solution))
        t_loop = t_sub * args.n / k
        check = global_average_precision(ids[:k], lids[:k], confs[:k], sub_solution)
        loop_note = f"(measured on {k:,} predictions: {t_sub:.2f} s, extrapolated linearly)"
    else:
        t_loop, loop_value = best_of(1, lambda: loop_gap(py_ids, py_lids, py_confs, solution))
        check = ours
        loop_note = "(measured on all of them)"

    n_pred = int((lids >= 0).sum())
    print(f"GAP over {args.n:,} images, {n_pred:,} predictions, {NUM_CLASSES:,} classes, seed {args.seed}")
    print(f"  ours, ground truth prebuilt      {t_ours:8.3f} s   GAP {ours!r}")
    print(f"  ours, from the dict (incl. build) {t_cold:7.3f} s   GAP {cold!r}")
    print(f"  GroundTruth.from_mapping alone   {t_build:8.3f} s")
    print(f"  plain Python loop                {t_loop:8.3f} s   GAP {loop_value!r} {loop_note}")
    print(f"  ratio loop / ours (prebuilt)     {t_loop / t_ours:8.1f}x")
    print(f"  ratio loop / ours (from dict)    {t_loop / t_cold:8.1f}x")
    same = loop_value == check and ours == cold
    print(f"  same value to the last digit: {same}" + ("" if k == args.n else " (loop vs ours on the same subset)"))
    if not same:
        raise SystemExit("the loop and the vectorised GAP disagree")
    if args.file_rows > 0:
        rows = min(args.file_rows, args.n)
        path = Path(tempfile.mkdtemp()) / "submission.csv"
        t_write, _ = best_of(1, lambda: write_submission(path, ids[:rows], lids[:rows], confs[:rows]))
        t_bare, _ = best_of(args.repeats, lambda: pd.read_csv(path, dtype=str, keep_default_na=False))
        t_read, back = best_of(args.repeats, lambda: read_submission(path))
        shutil.rmtree(path.parent)
        if back["landmark_id"].tolist() != lids[:rows].tolist() or back["confidence"].fillna(-1).tolist() != \
                np.where(lids[:rows] >= 0, confs[:rows], -1).tolist():
            raise SystemExit("submission.csv did not read back what was written")
        print(f"submission.csv with {rows:,} rows: write {t_write:.3f} s, bare pd.read_csv {t_bare:.3f} s, "
              f"read_submission {t_read:.3f} s, ratio {t_read / t_bare:.1f}x")


if __name__ == "__main__":
    main()
