"""Does the input pipeline keep the model fed? Images/s of the pipeline alone, the step alone, and both.

Builds a sample GLDv2 folder (real photos, ``--source-size`` px), writes shards
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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.distribute import setup_runtime
from landmark_kaggle.model import build_model
from landmark_kaggle.optim import compile_model
from landmark_kaggle.pipeline import build_dataset, read_data_label_map
from landmark_kaggle.sample import make_sample
from tfrec_builder.write import write_dataset


def _fit_rate(model, ds, steps: int, batch: int) -> float:
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # trace and warm up first
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="EfficientNetV2S")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--source-size", type=int, default=256, help="stored JPEG size (records are decoded from it)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                    help="Keras dtype policy (auto: bf16 on TPU, fp16 on GPU, float32 on CPU)")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
