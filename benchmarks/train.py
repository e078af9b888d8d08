"""Training speed: does the input pipeline keep the model fed, and the JAX and TensorFlow backends side by side.

Default mode, the feed check. Builds a sample GLDv2 folder (real photos, ``--source-size`` px), writes shards
with ``tfrec-builder``'s ``write_dataset``, then measures in one run:

1. pipeline alone: the training stream (parse, decode, random resized crop,
   flip, colour, batch) drained without a model;
2. step alone: ``model.fit`` on one cached batch repeated (no decoding at all);
3. both: ``model.fit`` on the real stream, as the trainer runs it.

The goal is (3) ≥ 0.9 × (2): the pipeline never starves the model.

    python benchmarks/train.py [--backbone EfficientNetV2S] [--image-size 64] [--batch 16] [--steps 20]
                               [--precision auto|float32|mixed_float16|mixed_bfloat16]

On a GPU machine, the poster's setting with pre-resized shards, once per precision:

    python benchmarks/train.py --image-size 384 --source-size 384 --batch 64 --steps 50 --precision mixed_float16
    python benchmarks/train.py --image-size 384 --source-size 384 --batch 64 --steps 50 --precision mixed_bfloat16

``--backends``: the same model trained on the same cached batches (a tf.data
stream, as the trainer feeds it) by one child process per row, because a
process holds one Keras backend: TensorFlow, then JAX on each of
``--jax-devices`` (default ``cpu:1,cpu:2``: 1 host device, then data-parallel
over 2). Prints steps/s, the first (compiling) steps' time, and the ratios
first JAX row / TensorFlow and last JAX row / first.

    python benchmarks/train.py --backends [--backbone EfficientNetV2B0] [--image-size 64] [--batch 16]

On a GPU host (JAX bf16 against TensorFlow mixed_float16 at 384 px; the JAX
row on every GPU):

    python benchmarks/train.py --backends --backbone EfficientNetV2S --image-size 384 --batch 64 --steps 50 \
        --tf-precision mixed_float16 --jax-precision mixed_bfloat16 --jax-devices gpu

``--feed``: how the TPU is fed, on 8 JAX host devices (a v5e-8 stand-in) in one
process, side by side: float32 images and a step-end callback that reads the
logs every call (the trainer before issue 21), then uint8 images, then uint8
with ``steps_per_execution`` steps per compiled call; each uint8 model is timed
twice, with the old callback under Keras's callback list (logs read every call)
and with the trainer's ``LazyLogsList`` reading every ``--log-every`` steps.
Prints steps/s, input bytes sent to the devices per step (computed from the
settings: a CPU has no host-device link to measure) and host syncs per step
(counted: the calls whose logs were converted, ``tests/helpers.LogReads``).

    python benchmarks/train.py --feed [--backbone MobileNetV3Small] [--image-size 64] [--batch 64] [--steps 16]

On a Kaggle TPU VM (TensorFlow cannot reach the TPU there: JAX only, all 8 cores):

    python benchmarks/train.py --backends --only jax --backbone EfficientNetV2S --image-size 384 --batch 128 \
        --steps 50 --jax-precision mixed_bfloat16 --jax-devices tpu
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

from landmark_kaggle.config import config_from_dict


def _fit_rate(model, ds, steps: int, batch: int) -> float:
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # trace and warm up first
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch / (time.perf_counter() - t0)


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def feed_check(args) -> None:
    import tensorflow as tf

    from landmark_kaggle.data.pipeline import build_dataset, read_data_label_map
    from landmark_kaggle.data.sample import make_sample
    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.distribute import setup_runtime
    from landmark_kaggle.train.optim import compile_model
    from tfrec_builder.write import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_sample(tmp / "gld", num_classes=args.classes, max_per_class=40,
                    image_size=(args.source_size * 3 // 4, args.source_size))
        write_dataset(tmp / "gld", tmp / "tfrec", image_size=args.source_size, val_fraction=0.0, progress=False)
        data = str(tmp / "tfrec")
        classes = len(read_data_label_map(data))
        cfg = config_from_dict({}, [f"data.image_size={args.image_size}", f"model.backbone={args.backbone}",
                                    "optim.warmup_epochs=0", "data.shuffle_buffer=256"])

        def stream():
            return build_dataset(data, "train", cfg.data, args.batch, training=True)

        it = iter(stream())
        for _ in range(3):
            next(it)
        n = args.steps * 5
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        pipe = n * args.batch / (time.perf_counter() - t0)

        rt = setup_runtime("auto", args.precision)
        with rt.strategy.scope():
            model = build_model(cfg, classes)
            compile_model(model, cfg, steps_per_epoch=args.steps)
        cached = tf.data.Dataset.from_tensors(next(iter(stream()))).repeat()
        step = _fit_rate(model, cached, args.steps, args.batch)
        both = _fit_rate(model, stream(), args.steps, args.batch)

    print(f"backbone {args.backbone}, {args.image_size} px from {args.source_size} px JPEGs, batch {args.batch}, "
          f"{args.steps} steps, {classes} classes, {rt.precision} on {rt.kind} ({rt.replicas} replica(s))")
    print(f"pipeline alone      {pipe:9.1f} images/s")
    print(f"train step alone    {step:9.1f} images/s (cached batch)")
    print(f"pipeline + step     {both:9.1f} images/s")
    print(f"ratio both / step   {both / step:9.2f}  (goal >= 0.90)")
    print(f"ratio pipe / step   {pipe / step:9.2f}  (headroom of the input side)")


def measure(args) -> dict:
    """One row of ``--backends``, in this (child) process: the backend is chosen before Keras is imported."""
    from landmark_kaggle.train.backend import choose_backend

    cfg = config_from_dict({}, [f"data.image_size={args.image_size}", f"model.backbone={args.backbone}",
                                "optim.warmup_epochs=0", f"runtime.backend={args.measure}",
                                f"runtime.devices={args.devices}", f"runtime.precision={args.row_precision}"])
    choose_backend(cfg.runtime, announce=False)
    import keras
    import numpy as np
    import tensorflow as tf

    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.distribute import setup_runtime
    from landmark_kaggle.train.optim import compile_model

    r = cfg.runtime
    rt = setup_runtime(r.strategy, r.precision, r.devices, backend=r.backend)
    rng = np.random.default_rng(0)
    n = 4 * args.batch  # four distinct batches, the same arrays in every row
    x = rng.uniform(0, 255, (n, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, args.classes, n)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch, drop_remainder=True).cache().repeat()
    keras.utils.set_random_seed(0)
    with rt.scope():
        with rt.policy():
            model = build_model(cfg, args.classes)
        compile_model(model, cfg, steps_per_epoch=args.steps, jit_compile=rt.jit_compile)
        t0 = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # traces and compiles
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
        rate = args.steps / (time.perf_counter() - t0)
    return {"backend": rt.backend, "devices": f"{rt.kind}:{rt.replicas}", "precision": rt.precision,
            "first_two_steps_s": round(first, 2), "steps_per_s": round(rate, 4)}


def feed(args) -> None:
    """The ``--feed`` rows, in this process (JAX on ``--jax-devices``, default 8 host devices)."""
    from landmark_kaggle.train.backend import choose_backend

    devices = args.jax_devices if args.jax_devices != "cpu:1,cpu:2" else "cpu:8"
    cfg = config_from_dict({}, [f"data.image_size={args.image_size}", f"model.backbone={args.backbone}",
                                "optim.warmup_epochs=0", "runtime.backend=jax", f"runtime.devices={devices}",
                                f"runtime.precision={args.jax_precision}"])
    choose_backend(cfg.runtime, announce=False)
    import keras
    import numpy as np
    import tensorflow as tf

    # The tests' counter of host reads (tests/helpers.py): the syncs a step are counted, not assumed.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import LogReads

    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.callbacks import crosses, lazy_callbacks, read_logs
    from landmark_kaggle.train.distribute import setup_runtime
    from landmark_kaggle.train.optim import compile_model

    r = cfg.runtime
    rt = setup_runtime(r.strategy, r.precision, r.devices, backend=r.backend)
    rng = np.random.default_rng(0)
    n = 4 * args.batch
    x = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = rng.integers(0, args.classes, n)

    class ReadLogs(keras.callbacks.Callback):
        """The trainer's step-end callback before: the loss to the host at each call's end (Keras's callback
        list converts every call's logs too)."""

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])

    class ReadEvery(keras.callbacks.Callback):
        """The trainer's rule now (train/callbacks.py StepWatch), under its LazyLogsList: read every N steps,
        not at the epoch's last call (the epoch's end reads the metrics anyway)."""

        def __init__(self, every: int, per_call: int):
            super().__init__()
            self.every, self.per_call = every, per_call

        def on_train_batch_end(self, batch, logs=None):
            after = batch + 1
            if after < args.steps and crosses(after - self.per_call, after, self.every):
                read_logs(logs)

    rows = []
    with LogReads() as reads:
        for name, dtype, per_call in (("float32, 1 step a call", "float32", 1),
                                      ("uint8, 1 step a call", "uint8", 1),
                                      (f"uint8, {args.per_call} steps a call", "uint8", args.per_call)):
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch, drop_remainder=True)
            if dtype == "float32":
                ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
            ds = ds.cache().repeat().prefetch(2)
            keras.utils.set_random_seed(0)
            with rt.scope():
                with rt.policy():
                    model = build_model(cfg, args.classes)
                compile_model(model, cfg, steps_per_epoch=args.steps, jit_compile=rt.jit_compile,
                              steps_per_execution=per_call)
                t0 = time.perf_counter()
                model.fit(ds, epochs=1, steps_per_epoch=2 * per_call, verbose=0)  # traces and compiles
                first = time.perf_counter() - t0
                # The same compiled model, twice: Keras's callback list + the old callback, then the trainer's.
                ways = [("logs read every call", [ReadLogs()])]
                if dtype == "uint8":
                    ways.append((f"logs read every {args.log_every} steps",
                                 lazy_callbacks([ReadEvery(args.log_every, per_call)], model, epochs=1,
                                                steps=args.steps)))
                for way, callbacks in ways:
                    before = len(reads.read)
                    t0 = time.perf_counter()
                    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=callbacks)
                    rate = args.steps / (time.perf_counter() - t0)
                    rows.append((f"{name}, {way}", first, rate,
                                 args.batch * args.image_size ** 2 * 3 * (4 if dtype == "float32" else 1),
                                 (len(reads.read) - before) / args.steps))
    print(f"{args.backbone}, {args.image_size} px, global batch {args.batch} over {rt.replicas} {rt.kind} device(s), "
          f"{rt.precision}, {args.steps} timed steps on the same 4 cached batches; syncs counted (helpers.LogReads): "
          "calls whose step logs reached the host, a step (each fit also reads its epoch metrics once)")
    print(f"{'feed':<58} {'compile':>8} {'steps/s':>8} {'MB in/step':>10} {'syncs/step':>10} {'vs first':>8}")
    for name, first, rate, nbytes, syncs in rows:
        print(f"{name:<58} {first:>7.1f}s {rate:>8.3f} {nbytes / 1e6:>10.2f} {syncs:>10.4f} {rate / rows[0][2]:>8.2f}")


def backends(args) -> None:
    rows = [("tensorflow", "auto", args.tf_precision)]
    rows += [("jax", d.strip(), args.jax_precision) for d in args.jax_devices.split(",") if d.strip()]
    if args.only:
        rows = [r for r in rows if r[0] == args.only]
    results = []
    for backend, devices, precision in rows:
        cmd = [sys.executable, __file__, "--measure", backend, "--devices", devices, "--row-precision", precision,
               "--backbone", args.backbone, "--image-size", str(args.image_size), "--batch", str(args.batch),
               "--steps", str(args.steps), "--classes", str(args.classes)]
        env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS", "JAX_PLATFORMS")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{backend} on {devices} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{args.backbone}, {args.image_size} px, global batch {args.batch}, {args.classes} classes, "
          f"{args.steps} timed steps on the same 4 cached batches")
    print(f"{'backend':<11} {'devices':<8} {'precision':<15} {'first 2 steps':>13} {'steps/s':>8} {'images/s':>9}")
    for r in results:
        print(f"{r['backend']:<11} {r['devices']:<8} {r['precision']:<15} {r['first_two_steps_s']:>11.1f} s "
              f"{r['steps_per_s']:>8.3f} {r['steps_per_s'] * args.batch:>9.1f}")
    tf_row = next((r for r in results if r["backend"] == "tensorflow"), None)
    jax_rows = [r for r in results if r["backend"] == "jax"]
    if tf_row and jax_rows:
        print(f"ratio JAX ({jax_rows[0]['devices']}) / TensorFlow steps/s   "
              f"{jax_rows[0]['steps_per_s'] / tf_row['steps_per_s']:.2f}")
    if len(jax_rows) >= 2:
        print(f"ratio JAX {jax_rows[-1]['devices']} / {jax_rows[0]['devices']} steps/s   "
              f"{jax_rows[-1]['steps_per_s'] / jax_rows[0]['steps_per_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="EfficientNetV2S")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--source-size", type=int, default=256, help="stored JPEG size (records are decoded from it)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="Keras dtype policy (auto: bf16 on TPU, fp16 on GPU, float32 on CPU)")
    ap.add_argument("--backends", action="store_true", help="TensorFlow vs JAX, and JAX on N devices vs 1")
    ap.add_argument("--only", choices=("tensorflow", "jax"), help="--backends: only this backend's rows")
    ap.add_argument("--tf-precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--jax-precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--jax-devices", default="cpu:1,cpu:2",
                    help="--backends: one JAX row per runtime.devices value (cpu:N, gpu, tpu), comma-separated")
    ap.add_argument("--feed", action="store_true", help="TPU feeding: float32 vs uint8 images, steps per call")
    ap.add_argument("--per-call", type=int, default=8, help="--feed: steps_per_execution of the last row")
    ap.add_argument("--log-every", type=int, default=8,
                    help="--feed: session.log_every_steps of the rows with the trainer's callbacks")
    ap.add_argument("--measure", choices=("tensorflow", "jax"), help=argparse.SUPPRESS)
    ap.add_argument("--devices", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--row-precision", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
    elif args.backends:
        backends(args)
    elif args.feed:
        feed(args)
    else:
        feed_check(args)


if __name__ == "__main__":
    main()
