"""Quality on real landmark photos: ImageNet kNN against ArcFace fine-tuning and every scoring rule (issue 20).

One run, one table, on ``tests/data/oxparis`` by default or any GLDv2-layout
folder with a ``solution.csv`` (``--data``; a ``distractors/`` folder of
non-landmark photos beside ``test/`` feeds the non-landmark rules). Each step is
the library function behind the CLI (``tests/quality_runs.py``):
``tfrec-builder write`` (every training image, no validation split) →
the ImageNet EfficientNet-Lite0 saved untrained → ``embed-index`` → ``predict``
as cosine kNN-1 (no training), then ``landmark-kaggle train`` from that same
ImageNet start → ``embed-index --nonlandmarks`` → ``predict`` with each rule
→ ``score``. GAP counts every test image (non-landmarks too, as Kaggle does);
top-1 is over the landmark test images. Training uses the library's defaults
except the settings printed above the table (``--set`` adds more), so the
figures follow whatever the trainer and the rules do on the branch measured.

    python benchmarks/quality.py [--data tests/data/oxparis] [--out runs/quality] [--image-size 128]
                                 [--epochs 8] [--seed 0] [--set optim.learning_rate=3e-4 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import quality_runs as Q  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Q.OXPARIS))
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further training/inference setting, as `landmark-kaggle train --set`")
    args = parser.parse_args()

    data, out = Path(args.data), Path(args.out)
    if not (data / "solution.csv").is_file():
        sys.exit(f"{data}: no solution.csv to score against")
    if out.exists():
        shutil.rmtree(out)  # every figure of the table comes from this run
    distractors = data / "distractors"
    distractors = distractors if distractors.is_dir() else None
    import keras

    keras.utils.set_random_seed(args.seed)
    train_sets = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
                  *args.set]
    cfg = Q.config(args.image_size, train_sets)
    stages, rows = [], []

    def stage(name, fn):
        start = time.perf_counter()
        result = fn()
        stages.append((name, time.perf_counter() - start))
        print(f"quality: {name} {stages[-1][1]:.1f} s", flush=True)
        return result

    tfrec = stage("write shards", lambda: Q.write_shards(data, out / "tfrec", args.image_size, args.seed))
    imagenet = stage("ImageNet model folder", lambda: Q.imagenet_model(tfrec, out / "imagenet", cfg))
    base_idx, _ = stage("embed-index (ImageNet)",
                        lambda: Q.indexes(imagenet, tfrec, distractors, out / "imagenet-index"))
    rows.append(("ImageNet features, no training", "cosine kNN-1",
                 Q.evaluate(imagenet, data, out / "eval", index=base_idx, overrides=Q.KNN1)))
    summary = stage("train (fine-tune from ImageNet)", lambda: Q.fine_tune(tfrec, out / "model", cfg))
    model = out / "model"
    idx, dis = stage("embed-index --nonlandmarks", lambda: Q.indexes(model, tfrec, distractors, out / "model-index"))
    tuned = "ArcFace fine-tuned from ImageNet"
    for rule, kw, sets in (
            ("cosine kNN-1", {"index": idx}, Q.KNN1),
            ("linear, classifier only", {}, ()),
            ("linear + retrieval", {"index": idx}, ()),
            ("linear + retrieval + non-landmark penalty", {"index": idx, "distractors": dis}, ()),
            ("glr2020_1st", {"index": idx, "distractors": dis}, ("inference.scoring=glr2020_1st",)),
            ("glr2020_3rd", {"index": idx}, ("inference.scoring=glr2020_3rd",))):
        if kw.get("distractors", 1) is None:
            continue  # no non-landmark gallery in this folder
        rows.append((tuned, rule, Q.evaluate(model, data, out / "eval", overrides=sets, **kw)))

    n_lm = rows[0][2]["n_landmark_images"]
    print(f"\ndata {data}: test images scored against solution.csv ({n_lm} landmark images for top-1); "
          f"distractors: {distractors or 'none'}")
    print(f"EfficientNet-Lite0 ImageNet start, {args.image_size} px, {summary['epochs_done']} epochs "
          f"({summary['global_step']} steps) at batch {args.batch_size}, seed {args.seed}; settings: "
          + " ".join([*Q.BASE, *train_sets]) + f"; {os.cpu_count()} CPUs, load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print("\n| model | rule | GAP | top-1 | predict wall |")
    print("| --- | --- | --- | --- | --- |")
    for name, rule, r in rows:
        print(f"| {name} | {rule} | {r['gap']:.4f} | {r['top1']:.3f} | {r['seconds']:.1f} s |")
    print("\n| stage | wall |")
    print("| --- | --- |")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
