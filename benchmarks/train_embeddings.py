"""Does Partial FC make `train-embeddings` an epoch in minutes on a CPU at GLDv2 scale, without losing accuracy?

Two measurements in one run, both through the trainer's own ``make_trainer``
(the same model, optimizer, schedule and ``model.fit`` that
``landmark-kaggle train-embeddings`` uses):

1. speed at GLDv2 shape: random 512-d vectors, 81,313 classes with a
   GLDv2-like long tail over 1,580,470 labels (a few classes of thousands of
   images, most of a handful). A few timed training steps of the full softmax (as the
   trainer ran before Partial FC: batch 1024, top-k metrics on every step) and
   of Partial FC at the defaults, plus the per-epoch validation pass over the
   5% held out (full classifier, top-k), extrapolated to minutes an epoch;
2. quality on a learnable problem: long-tailed clustered vectors
   (``--q-classes`` classes), the full softmax and Partial FC at rates 0.1
   and 0.05 trained for the same epochs from the same seed, and their
   validation top-1 over every class.

    python benchmarks/train_embeddings.py [--steps 4] [--sweep] [--q-classes 4000] [--q-epochs 8]

``--sweep`` also times Partial FC at other batch sizes and sample rates.
Only the timed batches' vectors are drawn (a step does not depend on N), so it needs ~3 GB.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from landmark_kaggle.config import config_from_dict  # noqa: E402
from landmark_kaggle.model import build_embedding_model  # noqa: E402
from landmark_kaggle.partial_fc import sample_size  # noqa: E402
from landmark_kaggle.train_embeddings import (  # noqa: E402
    DEFAULT_BATCH,
    VAL_BATCH,
    make_trainer,
)

GLD_IMAGES, GLD_CLASSES, GLD_LARGEST, DIM = 1_580_470, 81_313, 6_272, 512
VAL_FRACTION = 0.05
MAX_LOGITS = 4096 * 16_263  # the sweep's largest batch × K (peak ~6 GB)
WARMUP = 2  # steps traced and discarded before timing


def long_tail_counts(n: int = GLD_IMAGES, classes: int = GLD_CLASSES, largest: int = GLD_LARGEST) -> np.ndarray:
    """Class sizes ∝ rank^-a (at least 2), the exponent chosen so they add up to n; GLDv2's largest has 6,272."""
    rank = np.arange(1, classes + 1, dtype=np.float64)
    lo, hi = 0.1, 3.0
    for _ in range(60):
        a = (lo + hi) / 2
        total = np.maximum(2, np.round(largest * rank**-a)).sum()
        lo, hi = (lo, a) if total < n else (a, hi)
    counts = np.maximum(2, np.round(largest * rank**-a)).astype(np.int64)
    counts[: abs(int(n - counts.sum()))] += np.sign(n - counts.sum())  # the rounding leftover, on the big classes
    return counts


def free_memory() -> None:
    """Drop the previous setting's model and optimizer (0.5 GB at GLDv2 size) before building the next."""
    keras.backend.clear_session()
    gc.collect()


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def time_steps(cfg, x, y, counts, batch: int, steps: int, warmup: int = WARMUP) -> tuple[float, int]:
    """Seconds a training step (median after ``warmup`` traced steps) and K, the classes a step sees."""
    free_memory()
    keras.utils.set_random_seed(0)
    model = build_embedding_model(cfg, DIM, len(counts))
    trainer, k = make_trainer(model, cfg, counts, steps_per_epoch=warmup + steps, batch_size=batch)
    timer = StepTimer()
    trainer.fit(x, y, batch_size=batch, epochs=1, callbacks=[timer], verbose=0)
    return float(np.median(np.diff(timer.ends[warmup - 1:]))), k


def time_validation(cfg, x, y, counts, batch: int, steps: int) -> float:
    """Seconds to validate one batch over every class (ArcFace loss + top-1/10/100/1000), after a traced one."""
    model = build_embedding_model(cfg, DIM, len(counts))
    trainer, _ = make_trainer(model, cfg, counts, steps_per_epoch=1, batch_size=batch)
    trainer.evaluate(x[:batch], y[:batch], batch_size=batch, verbose=0)
    t0 = time.perf_counter()
    trainer.evaluate(x[: steps * batch], y[: steps * batch], batch_size=batch, verbose=0)
    return (time.perf_counter() - t0) / steps


def speed(args) -> dict:
    counts = long_tail_counts()
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(GLD_CLASSES), counts))
    train_n = round(GLD_IMAGES * (1 - VAL_FRACTION))

    def vectors(n):
        # A step costs the same whatever N is (one gathered batch), so only the timed rows are drawn; the
        # labels are the first n of all 1.58M shuffled long-tail labels, so each batch has GLDv2's class mix.
        return rng.standard_normal((n, DIM), dtype=np.float32), y[:n]

    print(f"GLDv2 shape: {GLD_IMAGES:,} × {DIM} vectors, {GLD_CLASSES:,} classes "
          f"(sizes {counts.min()}..{counts.max()}, median {int(np.median(counts))}); "
          f"an epoch trains on {train_n:,} and validates on {GLD_IMAGES - train_n:,}", flush=True)
    base = ["optim.warmup_epochs=0"]
    runs = [("full softmax (before)", 1024, 1.0), ("partial FC (default)", DEFAULT_BATCH, 0.0)]
    if args.sweep:
        seen = {(DEFAULT_BATCH, sample_size(GLD_CLASSES, 0.1, DEFAULT_BATCH))}
        for b, r in ((b, r) for b in (2048, 4096, 8192) for r in (0.05, 0.1, 0.2)):
            k = sample_size(GLD_CLASSES, r, b)
            # Below K = batch every rate is the same run; past 67M logits a step the run would pass 8 GB.
            if (b, k) not in seen and b * k <= MAX_LOGITS:
                seen.add((b, k))
                runs.append(("partial FC", b, r))
    val_batch = VAL_BATCH
    val_s = time_validation(config_from_dict({}, base), *vectors((args.val_steps + 1) * val_batch), counts,
                            val_batch, args.val_steps)
    val_min = val_s * -(-(GLD_IMAGES - train_n) // val_batch) / 60
    print(f"validation over all classes: {val_s:.2f} s per {val_batch} vectors → {val_min:.1f} min an epoch",
          flush=True)
    out = {}
    for name, batch, rate in runs:
        cfg = config_from_dict({}, [*base, f"embeddings.class_sample={rate}"])
        s, k = time_steps(cfg, *vectors((WARMUP + args.steps) * batch), counts, batch, args.steps)
        steps = -(-train_n // batch)
        minutes = s * steps / 60
        out[name, batch, k] = minutes
        print(f"{name:22s} batch {batch:5d}, {k:6d} classes a step ({k / GLD_CLASSES:4.0%}): "
              f"{s:5.2f} s/step × {steps:5d} steps "
              f"= {minutes:6.1f} min training, {minutes + val_min:6.1f} min with validation", flush=True)
    before, after = out[runs[0][0], 1024, GLD_CLASSES], next(v for key, v in out.items() if key[0] == runs[1][0])
    print(f"Partial FC at the defaults trains an epoch {before / after:.1f}× faster "
          f"({(before + val_min) / (after + val_min):.1f}× with validation)", flush=True)
    return out


def clustered(classes: int, dim: int, seed: int = 0, noise: float = 1.4):
    """Long-tailed clustered vectors (3..60 a class), 20% of each class's vectors held out."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.round(60 * np.arange(1, classes + 1) ** -0.5), 4, None).astype(int)
    labels = np.repeat(np.arange(classes), sizes)
    x = rng.normal(size=(classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    held = rng.random(len(labels)) < 0.2
    return x.astype(np.float32), labels, held, sizes


def quality(args) -> None:
    x, y, held, sizes = clustered(args.q_classes, 64)
    print(f"quality: {args.q_classes} clustered classes, {(~held).sum():,} train / {held.sum():,} validation "
          f"vectors, batch {args.q_batch}, {args.q_epochs} epochs", flush=True)
    for name, rate in (("full softmax", 1.0), ("partial FC", 0.1), ("partial FC", 0.05)):
        cfg = config_from_dict({}, [f"embeddings.class_sample={rate}", f"train.epochs={args.q_epochs}",
                                    "optim.warmup_epochs=0"])
        keras.utils.set_random_seed(0)
        steps = -(-int((~held).sum()) // args.q_batch)
        trainer, k = make_trainer(build_embedding_model(cfg, x.shape[1], args.q_classes), cfg, sizes,
                                  steps_per_epoch=steps, batch_size=args.q_batch)
        t0 = time.perf_counter()
        hist = trainer.fit(x[~held], y[~held], batch_size=args.q_batch, epochs=args.q_epochs,
                           validation_data=(x[held], y[held]), verbose=0).history
        top1 = " ".join(f"{v:.3f}" for v in hist["val_top1"])
        print(f"{name:13s} {k:5d} classes a step: val top-1 by epoch {top1}; {time.perf_counter() - t0:.0f} s",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per setting (after 2 traced)")
    ap.add_argument("--val-steps", type=int, default=3, help="timed validation batches")
    ap.add_argument("--sweep", action="store_true", help="also time Partial FC at other batch sizes and rates")
    ap.add_argument("--q-classes", type=int, default=4000)
    ap.add_argument("--q-epochs", type=int, default=8)
    ap.add_argument("--q-batch", type=int, default=256)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if not args.skip_speed:
        speed(args)
    if not args.skip_quality:
        quality(args)
    print(f"load average {os.getloadavg()[0]:.2f} at end", flush=True)


if __name__ == "__main__":
    main()
