"""Quality on real landmark photos: ImageNet kNN against ArcFace fine-tuning and every scoring rule (issues 20, 22).

One run, one table, on ``tests/data/oxparis`` by default or any GLDv2-layout
folder with a ``solution.csv`` (``--data``; a ``distractors/`` folder of
non-landmark photos beside ``test/`` feeds the non-landmark rules). Each step is
the library function behind the CLI (``tests/quality_runs.py``):
``tfrec-builder write`` (every training image, no validation split) →
the ImageNet EfficientNet-Lite0 saved untrained → ``embed-index`` → ``predict``
as cosine kNN-1 (no training), then, for each seed of ``--seeds``,
``landmark-kaggle train`` from that same ImageNet start → ``embed-index
--nonlandmarks`` → ``predict`` with each rule → ``score``.

The comparison is fair in k (issue 22): every rule that searches the index
reads the same k neighbours, for each k of ``--k`` (``inference.topk_neighbours``
for linear, ``inference.rule_neighbours`` for the GLR2020 rules), and the two
GLR2020 rules are also run at their published k (3 and 5) when ``--k`` lacks it. GAP counts every
test image (non-landmarks too, as Kaggle does); "GAP lm" leaves the
non-landmark test photos out (``score(ignore_nonlandmark=True)``), so it shows
a rule on landmarks alone, apart from how low it ranks the non-landmarks; top-1
is over the landmark test images. Each rule's figures are given per seed and as
mean ± sample standard deviation over the seeds. Training uses the library's
defaults except the settings printed above the tables (``--set`` adds more).

    python benchmarks/quality.py [--data tests/data/oxparis] [--out runs/quality] [--image-size 128]
                                 [--epochs 8] [--seeds 0,1,2 | --seed 0] [--k 5,3] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import quality_runs as Q  # noqa: E402

# The GLR2020 rules' published k (scoring.FIRST_KEEP, scoring.THIRD_NEIGHBOURS), run besides the common k.
PUBLISHED_K = {"glr2020_1st": 3, "glr2020_3rd": 5}


def rules(ks: list[int]) -> list[tuple[str, str, bool, tuple[str, ...]]]:
    """(rule, k shown, needs the non-landmark gallery, predict overrides) for the fine-tuned model: every rule
    that reads neighbours at each k of ``ks`` (the first is the table's common k), and the GLR2020 rules also
    at their published k."""
    out = [("cosine kNN-1", "1", False, Q.KNN1),
           ("linear, classifier only", "-", False, ("inference.retrieval_weight=0",))]
    for rule, needs in (("linear + retrieval", False), ("linear + retrieval + non-landmark penalty", True)):
        out += [(rule, str(k), needs, (f"inference.topk_neighbours={k}",)) for k in ks]
    for rule, published in PUBLISHED_K.items():
        for k in [*ks, *([published] if published not in ks else [])]:
            out.append((rule, f"{k}" + (" (published)" if k == published else ""), rule == "glr2020_1st",
                        (f"inference.scoring={rule}", f"inference.rule_neighbours={k}")))
    return out


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Q.OXPARIS))
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="one fine-tune with this seed (see --seeds)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, one fine-tune each, e.g. 0,1,2")
    parser.add_argument("--k", default="5,3",
                        help="comma-separated neighbours every retrieval rule reads, each in turn (kNN-1 aside)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further training/inference setting, as `landmark-kaggle train --set`")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]

    data, out = Path(args.data), Path(args.out)
    if not (data / "solution.csv").is_file():
        sys.exit(f"{data}: no solution.csv to score against")
    if out.exists():
        shutil.rmtree(out)  # every figure of the table comes from this run
    distractors = data / "distractors"
    distractors = distractors if distractors.is_dir() else None
    import keras

    stages: list[tuple[str, float]] = []

    def stage(name, fn, *fn_args):
        start = time.perf_counter()
        result = fn(*fn_args)
        stages.append((name, time.perf_counter() - start))
        print(f"quality: {name} {stages[-1][1]:.1f} s", flush=True)
        return result

    def sets_for(seed):
        return [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.seed={seed}", *args.set]

    # The ImageNet reference has no seed: an untrained backbone, and kNN-1 never reads the random classifier.
    keras.utils.set_random_seed(seeds[0])
    cfg = Q.config(args.image_size, sets_for(seeds[0]))
    tfrec = stage("write shards", Q.write_shards, data, out / "tfrec", args.image_size, seeds[0])
    imagenet = stage("ImageNet model folder", Q.imagenet_model, tfrec, out / "imagenet", cfg)
    base_idx, _ = stage("embed-index (ImageNet)", Q.indexes, imagenet, tfrec, None, out / "imagenet-index")
    base = Q.evaluate(imagenet, data, out / "eval", index=base_idx, overrides=Q.KNN1)
    # Without a non-landmark gallery the rules that need one cannot run.
    table = [r for r in rules([int(k) for k in args.k.split(",")]) if distractors or not r[2]]
    results: dict[int, list[dict]] = {}
    summaries = {}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        cfg = Q.config(args.image_size, sets_for(seed))
        work = out / f"seed{seed}"
        # The first seed's shards are the ones written above.
        tf_dir = tfrec if seed == seeds[0] else stage(f"write shards (seed {seed})", Q.write_shards, data,
                                                       work / "tfrec", args.image_size, seed)
        model = work / "model"
        summaries[seed] = stage(f"train (seed {seed})", Q.fine_tune, tf_dir, model, cfg)
        idx, dis = stage(f"embed-index --nonlandmarks (seed {seed})",
                         Q.indexes, model, tf_dir, distractors, work / "index")
        results[seed] = [Q.evaluate(model, data, work / "eval", index=idx,
                                    distractors=dis if needs else None, overrides=sets)
                         for _, _, needs, sets in table]

    s0 = summaries[seeds[0]]
    print(f"\ndata {data}: {base['n_landmark_images']} landmark test images for top-1; "
          f"distractors: {distractors or 'none'}")
    print(f"EfficientNet-Lite0 ImageNet start, {args.image_size} px, {s0['epochs_done']} epochs "
          f"({s0['global_step']} steps) at batch {args.batch_size}, seeds {','.join(map(str, seeds))}; settings: "
          + " ".join([*Q.BASE, *sets_for('S')]) + f"; {os.cpu_count()} CPUs, load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"\nImageNet features, no training, cosine kNN-1: GAP {base['gap']:.4f}, GAP lm {base['gap_landmarks']:.4f}, "
          f"top-1 {base['top1']:.3f}")
    print("\nArcFace fine-tuned from ImageNet, each rule over the seeds (mean ± sd):\n")
    print("| rule | k | GAP | GAP lm | top-1 | GAP per seed | top-1 per seed | predict wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (rule, k, _, _) in enumerate(table):
        per = [results[s][i] for s in seeds]
        print(f"| {rule} | {k} | {spread([r['gap'] for r in per])} | {spread([r['gap_landmarks'] for r in per])} "
              f"| {spread([r['top1'] for r in per])} | {' / '.join(format(r['gap'], '.3f') for r in per)} "
              f"| {' / '.join(format(r['top1'], '.3f') for r in per)} "
              f"| {statistics.mean(r['seconds'] for r in per):.1f} s |")
    print("\n| stage | wall |")
    print("| --- | --- |")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
