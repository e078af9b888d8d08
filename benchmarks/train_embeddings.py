"""Does Partial FC make `train-embeddings` an epoch in minutes on a CPU at GLDv2 scale, without losing accuracy?

Full softmax against Partial FC at the same batch, with the same per-step
work besides the classifier: both report the training loss alone each step
(the Partial FC step computes no top-k, so the full softmax here is compiled
without metrics), both use the trainer's optimizer, schedule and loss
(``optim.make_optimizer``, ``make_loss``) and Partial FC runs through the
trainer's own ``make_trainer``. Two measurements in one run:

1. speed at GLDv2 shape: random 512-d vectors, 81,313 classes with a
   GLDv2-like long tail over 1,580,470 labels (a few classes of thousands of
   images, most of a handful). Timed training steps of the full softmax and of
   Partial FC (rate 0.1, the default) at each batch of ``--batches`` (default
   1024), plus Partial FC at its default batch (4096), the full softmax as
   ``train-embeddings --set embeddings.class_sample=1.0`` compiles it
   (top-1/10/100/1000 on every training step, batch 1024), and the per-epoch
   validation pass over the 5% held out (full classifier, top-k);
   extrapolated to minutes an epoch;
2. quality on a learnable problem: long-tailed clustered vectors
   (``--q-classes`` classes), the full softmax and Partial FC at rates 0.1
   and 0.05 trained for the same epochs from the same seed at the same batch,
   each scored after every epoch by the same top-1 over every class.

    python benchmarks/train_embeddings.py [--steps 4] [--batches 1024] [--sweep] [--q-classes 4000]

``--sweep`` also times Partial FC at other batch sizes and sample rates.
Only the timed batches' vectors are drawn (a step does not depend on N). Peak
RSS measured for a whole run: 7.8 GB with the full softmax at batches 1024 and
2048, 10.9 GB with it at 4096 (benchmarks/RESULTS.md).
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
from landmark_kaggle.model.network import build_embedding_model  # noqa: E402
from landmark_kaggle.train.embeddings import (  # noqa: E402
    DEFAULT_BATCH,
    VAL_BATCH,
    make_trainer,
)
from landmark_kaggle.train.optim import make_loss, make_optimizer  # noqa: E402
from landmark_kaggle.train.partial_fc import sample_size  # noqa: E402

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


def build(cfg, counts, input_dim: int, kind: str, steps_per_epoch: int, batch: int):
    """The model ``fit`` runs for one side, and K (the classes a training step sees).

    ``full``: the full softmax, loss alone each step (as Partial FC reports);
    ``full+topk``: the full softmax as ``train-embeddings`` compiles it (top-k metrics every step);
    ``pfc``: Partial FC through the trainer's ``make_trainer`` at ``embeddings.class_sample``.
    """
    model = build_embedding_model(cfg, input_dim, len(counts))
    if kind == "full":
        model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=make_loss(cfg, counts), jit_compile=False)
        return model, len(counts)
    if kind == "full+topk":
        cfg = config_from_dict({**cfg.to_dict(), "embeddings": {"class_sample": 1.0}})
    return make_trainer(model, cfg, counts, steps_per_epoch=steps_per_epoch, batch_size=batch)


def time_steps(cfg, x, y, counts, kind: str, batch: int, steps: int, warmup: int = WARMUP) -> tuple[float, int]:
    """Seconds a training step (median after ``warmup`` traced steps) and K, the classes a step sees."""
    free_memory()
    keras.utils.set_random_seed(0)
    trainer, k = build(cfg, counts, DIM, kind, warmup + steps, batch)
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
    base = ["optim.warmup_epochs=0", "embeddings.class_sample=0.1"]
    runs = []
    for batch in args.batches:
        runs += [("full softmax", "full", batch), ("partial FC, rate 0.1", "pfc", batch)]
    if DEFAULT_BATCH not in args.batches:
        runs.append(("partial FC, defaults", "pfc", DEFAULT_BATCH))
    runs.append(("full softmax + top-k every step", "full+topk", 1024))
    if args.sweep:
        seen = {(b, sample_size(GLD_CLASSES, 0.1, b)) for b in args.batches}
        for b, r in ((b, r) for b in (2048, 4096, 8192) for r in (0.05, 0.1, 0.2)):
            k = sample_size(GLD_CLASSES, r, b)
            # Below K = batch every rate is the same run; past 67M logits a step the run would pass 8 GB.
            if (b, k) not in seen and b * k <= MAX_LOGITS:
                seen.add((b, k))
                runs.append((f"partial FC, rate {r}", f"pfc@{r}", b))
    val_batch = VAL_BATCH
    val_s = time_validation(config_from_dict({}, base), *vectors((args.val_steps + 1) * val_batch), counts,
                            val_batch, args.val_steps)
    val_min = val_s * -(-(GLD_IMAGES - train_n) // val_batch) / 60
    print(f"validation over all classes: {val_s:.2f} s per {val_batch} vectors → {val_min:.1f} min an epoch",
          flush=True)
    out = {}
    for name, kind, batch in runs:
        rate = kind.split("@")[1] if "@" in kind else "0.1"
        cfg = config_from_dict({}, [*base, f"embeddings.class_sample={rate}"])
        s, k = time_steps(cfg, *vectors((WARMUP + args.steps) * batch), counts, kind.split("@")[0], batch,
                          args.steps)
        steps = -(-train_n // batch)
        minutes = s * steps / 60
        out[kind, batch] = (s, k, minutes)
        print(f"{name:32s} batch {batch:5d}, {k:6d} classes a step ({k / GLD_CLASSES:4.0%}): "
              f"{s:5.2f} s/step × {steps:5d} steps "
              f"= {minutes:6.1f} min training, {minutes + val_min:6.1f} min with validation", flush=True)
    for batch in args.batches:
        full, pfc = out["full", batch][2], out["pfc", batch][2]
        print(f"batch {batch}: Partial FC trains an epoch {full / pfc:.1f}× faster than the full softmax "
              f"({(full + val_min) / (pfc + val_min):.1f}× with validation)", flush=True)
    return out


def clustered(classes: int, dim: int, seed: int = 0, noise: float = 1.4):
    """Long-tailed clustered vectors (3..60 a class), 20% of each class's vectors held out."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.round(60 * np.arange(1, classes + 1) ** -0.5), 4, None).astype(int)
    labels = np.repeat(np.arange(classes), sizes)
    x = rng.normal(size=(classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    held = rng.random(len(labels)) < 0.2
    return x.astype(np.float32), labels, held, sizes


class TopOne(keras.callbacks.Callback):
    """Top-1 over every class on held-out vectors after each epoch, the same for both sides."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.top1 = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model.predict(self.x, batch_size=1024, verbose=0)
        self.top1.append(float(np.mean(logits.argmax(axis=1) == self.y)))


def quality(args) -> None:
    x, y, held, sizes = clustered(args.q_classes, 64)
    print(f"quality: {args.q_classes} clustered classes, {(~held).sum():,} train / {held.sum():,} validation "
          f"vectors, batch {args.q_batch} for every run, {args.q_epochs} epochs, loss alone each step", flush=True)
    for name, kind, rate in (("full softmax", "full", 1.0), ("partial FC", "pfc", 0.1), ("partial FC", "pfc", 0.05)):
        cfg = config_from_dict({}, [f"embeddings.class_sample={rate}", f"train.epochs={args.q_epochs}",
                                    "optim.warmup_epochs=0"])
        keras.utils.set_random_seed(0)
        steps = -(-int((~held).sum()) // args.q_batch)
        trainer, k = build(cfg, sizes, x.shape[1], kind, steps, args.q_batch)
        top1 = TopOne(x[held], y[held])
        t0 = time.perf_counter()
        trainer.fit(x[~held], y[~held], batch_size=args.q_batch, epochs=args.q_epochs, callbacks=[top1], verbose=0)
        wall = time.perf_counter() - t0
        print(f"{name:13s} {k:5d} classes a step: val top-1 by epoch {' '.join(f'{v:.3f}' for v in top1.top1)}; "
              f"{wall:.0f} s (validation included)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per setting (after 2 traced)")
    ap.add_argument("--val-steps", type=int, default=3, help="timed validation batches")
    ap.add_argument("--batches", type=int, nargs="+", default=[1024],
                    help="batches at which the full softmax and Partial FC are both timed (full at 4096: "
                         "10.9 GB peak)")
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
