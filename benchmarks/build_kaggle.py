"""What the Kaggle build kernels' wall time rests on, measured here: embed and write rates on real GLDv2 photos.

Side by side in one run, on the 13 real GLDv2 test photos (489–800 px) under
random ids (the tests' ``helpers.real_folder``), files in the page cache:

* the embed kernel's CPU side, per thread: ``embed.read_image`` (read, decode,
  BGR→RGB) plus ``backends.resize_square`` to the backbone's input size;
* the embed kernel's GPU side, here on the CPU: the keras:EfficientNetB7
  forward pass (random weights: the same arithmetic as ImageNet's) on batches
  of those images, after one warm-up batch, at each ``--sizes``;
* ``embed_dataset`` end to end (decode threads overlapping the network) at the
  first size, which is what one chunk of the kernel does;
* the write kernel: ``write_dataset`` at 512 px with 1 and 2 worker processes.

Every figure is img/s on this machine; README's Kaggle walk-through turns
them into wall-time estimates (benchmarks/RESULTS.md says how).

    python benchmarks/build_kaggle.py --sizes 600,256 --batch 4 --batches 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from helpers import REALDATA, real_folder  # noqa: E402

from landmark_kaggle.data.gld import load_train_index  # noqa: E402
from tfrec_builder.backends import resize_square  # noqa: E402
from tfrec_builder.embed import embed_dataset, read_image  # noqa: E402


def decode_rate(paths: list[str], size: int) -> float:
    t = time.perf_counter()
    for p in paths:
        image, _ = read_image(p)
        resize_square(image, size)
    return len(paths) / (time.perf_counter() - t)


def forward_rate(size: int, images: list[np.ndarray], batch: int, batches: int) -> tuple[float, float]:
    from tfrec_builder.keras_backends import KerasBackend

    t = time.perf_counter()
    backend = KerasBackend("EfficientNetB7", "none", size)
    built = time.perf_counter() - t
    backend.embed(images[:batch])  # trace once
    t = time.perf_counter()
    for b in range(batches):
        backend.embed(images[b * batch:(b + 1) * batch])
    return batch * batches / (time.perf_counter() - t), built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="600,256", help="B7 input sizes (600: B7's own)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per size")
    parser.add_argument("--copies", type=int, default=40, help="ids per real photo for the decode rows")
    parser.add_argument("--write-copies", type=int, default=200, help="ids per real photo for the write rows")
    parser.add_argument("--skip-write", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="build-kaggle-") as tmp:
        data = real_folder(Path(tmp) / "gld", copies=args.copies, sources=sorted(REALDATA.glob("*.jpg")))
        paths = list(load_train_index(data).frame["path"])
        decode_rate(paths[:50], sizes[0])  # warm the page cache and OpenCV
        print(f"{len(paths)} real photos (13 GLDv2 test JPEGs under {args.copies} ids each)")
        for size in sizes:
            print(f"decode + resize to {size}: {decode_rate(paths, size):.0f} img/s on one thread")
        images = [read_image(p)[0] for p in paths[:args.batch * args.batches]]
        for size in sizes:
            rate, built = forward_rate(size, images, args.batch, args.batches)
            print(f"EfficientNetB7 forward at {size} px, batch {args.batch}: {rate:.2f} img/s "
                  f"({1 / rate:.2f} s an image; model built in {built:.0f} s)")
        from tfrec_builder.keras_backends import KerasBackend

        small = real_folder(Path(tmp) / "small", copies=2, sources=sorted(REALDATA.glob("*.jpg")))
        backend = KerasBackend("EfficientNetB7", "none", sizes[0])  # built (and traced) outside the timing
        backend.embed(images[:args.batch])
        t = time.perf_counter()
        embed_dataset(small, Path(tmp) / "store", backend, batch_size=args.batch, chunk_size=args.batch * 2,
                      progress=False)
        count = len(load_train_index(small).frame)
        print(f"embed_dataset end to end at {sizes[0]} px: {count / (time.perf_counter() - t):.2f} img/s "
              f"({count} images in chunks of {args.batch * 2}, the probe image included)")
        if not args.skip_write:
            from tfrec_builder.plan import make_plan
            from tfrec_builder.write import write_dataset

            big = real_folder(Path(tmp) / "big", copies=args.write_copies, sources=sorted(REALDATA.glob("*.jpg")))
            planned = sum(s.planned_bytes for s in make_plan(big, outliers=None, image_size=512, quality=90,
                                                             shard_mb=100, val_fraction=0.02, seed=0).shards)
            for workers in (1, 2):
                out = Path(tmp) / f"tfrec{workers}"
                t = time.perf_counter()
                m = write_dataset(big, out, image_size=512, workers=workers, progress=False)
                took = time.perf_counter() - t
                done = m["written"]["train"] + m["written"]["validation"]
                size = m["_run"]["folder_bytes"]
                print(f"write at 512 px, {workers} worker(s): {done / took:.0f} img/s ({done} images, "
                      f"{size / 1e6:.0f} MB, {size / done / 1e3:.1f} KB an image; the plan's size model "
                      f"{planned / size:.2f}x the written bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
