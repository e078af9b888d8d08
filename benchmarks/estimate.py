"""Benchmark: ``write --estimate`` and the plan's size model against the bytes a full ``write`` really writes.

Three inputs, each written in full (1 worker) at several ``--image-size`` /
``--quality`` settings, the shards' bytes summed from the manifest:

- the embedded sample dataset at its defaults (``make_sample()``: about 190
  images of 160–224 px; fewer than 500, so the estimate prepares them all);
- a larger sample (14 classes, 20–300 a class, 160–640 px: about 1,500 images);
- 2,000 real photos: the 13 real GLDv2 test JPEGs, each copy resized with
  OpenCV to a random long side in 200–1600 px and saved at a random JPEG
  quality in 70–95, so file sizes and the copy/resize mix vary as in a crawl.

For each, ``estimate_build`` runs with ``--seeds`` seeds (500 images each) and
the table shows the written bytes, the mean estimate, its relative error (mean
and worst over the seeds), the stated 95% half-width, how many seeds' intervals
hold the written bytes, and the plan's size model now and before this change
(0.35 bytes per pixel of the square, quality ignored) as ratios to the written
bytes.

``--coverage N`` instead checks the stated interval itself: N seeds on the
real photos at 512 px / quality 90, the standardised errors' mean and spread
(0 and 1 for a calibrated interval) and how often the 95% interval holds.

    python benchmarks/estimate.py [--seeds 10] [--images 2000] [--realdata DIR] [--coverage N]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from landmark_kaggle.data import gld
from landmark_kaggle.data.sample import make_sample
from tfrec_builder.estimate import estimate_build
from tfrec_builder.plan import file_sizes, make_plan
from tfrec_builder.write import write_dataset

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "gldv2-test-images"
SETTINGS = [(512, 90), (384, 90), (256, 90), (512, 75), (512, 100)]


def real_folder(root: Path, sources: list[Path], n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    photos = [cv2.imread(str(p)) for p in sources]
    rows = []
    for i in range(n):
        k = i % len(photos)
        h, w = photos[k].shape[:2]
        scale = int(rng.integers(200, 1601)) / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(photos[k], size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        image_id = f"{int(rng.integers(0, 2**63)):016x}"
        path = gld.image_path(root, "train", image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])[1])
        rows.append((image_id, 100 + k))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    return root


def old_model(data: Path, image_size: int) -> int:
    """The size model before this change: min(file, 0.35·S² + 1024) per file."""
    paths = gld.load_train_index(data).frame["path"].tolist()
    return int(np.minimum(file_sizes(paths), int(0.35 * image_size * image_size) + 1024).sum())


def measure(name: str, data: Path, work: Path, seeds: int) -> list[str]:
    rows = []
    for size, quality in SETTINGS:
        kw = dict(image_size=size, quality=quality, shard_mb=100, val_fraction=0.02)
        t0 = time.perf_counter()
        m = write_dataset(data, work / f"{name}-{size}-{quality}", workers=1, progress=False, **kw)
        t_write = time.perf_counter() - t0
        actual = sum(s["bytes"] for s in m["shards"])
        planned = sum(s.planned_bytes for s in make_plan(data, outliers=None, seed=0, **kw).shards)
        errs, halves, covered, t_est = [], [], 0, 0.0
        for seed in range(seeds):
            t0 = time.perf_counter()
            est = estimate_build(data, seed=seed, progress=False, **kw)
            t_est += time.perf_counter() - t0
            errs.append(est["total"]["bytes"] / actual - 1)
            halves.append(est["total"]["ci95"] / actual)
            covered += abs(est["total"]["bytes"] - actual) <= est["total"]["ci95"]
        errs = np.array(errs)
        rows.append(f"| {name} | {est['images']} | {size} / {quality} | {actual / 1e6:.2f} MB | "
                    f"{actual * (1 + errs.mean()) / 1e6:.2f} MB | {errs.mean():+.1%} | {np.abs(errs).max():.1%} | "
                    f"±{np.mean(halves):.1%} | {covered}/{seeds} | {planned / actual:.2f}x | "
                    f"{old_model(data, size) / actual:.2f}x | {t_est / seeds:.1f} s / {t_write:.1f} s |")
        print(rows[-1], flush=True)
    return rows


def coverage(data: Path, work: Path, seeds: int) -> None:
    kw = dict(image_size=512, quality=90, shard_mb=100, val_fraction=0.02)
    m = write_dataset(data, work / "coverage", workers=1, progress=False, **kw)
    actual = sum(s["bytes"] for s in m["shards"])
    z = []
    for seed in range(seeds):
        est = estimate_build(data, seed=seed, progress=False, **kw)
        z.append((est["total"]["bytes"] - actual) / (est["total"]["ci95"] / 1.96))
    z = np.array(z)
    print(f"real photos, 512 / 90, {seeds} seeds: standardised error mean {z.mean():+.2f}, sd {z.std():.2f}; "
          f"the 95% interval held the written bytes in {(np.abs(z) <= 1.96).mean():.1%} of the seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--images", type=int, default=2000, help="real-photo folder size")
    parser.add_argument("--realdata", default=str(REAL))
    parser.add_argument("--coverage", type=int, default=0, help="only check the interval, over this many seeds")
    args = parser.parse_args()
    if args.coverage:
        with tempfile.TemporaryDirectory() as tmp:
            real_folder(Path(tmp) / "real", sorted(Path(args.realdata).glob("*.jpg")), args.images)
            coverage(Path(tmp) / "real", Path(tmp), args.coverage)
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print("| input | images | size / quality | written | estimate (mean) | mean error | worst error | "
          "stated 95% | written inside | plan model now | before | estimate / write time |")
    print("| --- " * 12 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_sample(tmp / "sample")
        measure("sample (default)", tmp / "sample", tmp, args.seeds)
        make_sample(tmp / "sample-large", num_classes=14, max_per_class=300, min_per_class=20,
                    image_size=(160, 640))
        measure("sample (large)", tmp / "sample-large", tmp, args.seeds)
        sources = sorted(Path(args.realdata).glob("*.jpg"))
        real_folder(tmp / "real", sources, args.images)
        measure("real photos", tmp / "real", tmp, args.seeds)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
