"""GAP of every scoring rule × flip TTA × one model or a two-model ensemble (issues 15 and 22).

Two sources of test images:

- ``--data DIR --model M [--model M2]`` (issue 22): a folder in GLDv2 layout
  with real photos, e.g. ``../shared/realdata/oxparis`` (train.csv + train/,
  test/, solution.csv, sample_submission.csv, and distractors/, non-landmark
  photos never in train or test), and model folders trained on its train set
  (their label map must hold its landmarks; ImageNet-started backbones are
  what make the comparison mean something). The train set is the retrieval
  index (``inference.index_from=competition``, embedded once per model set
  and TTA mode and reused), distractors/ the non-landmark gallery (B and C of
  glr2020_1st, the penalty of linear). Every rule runs at each k of ``--k``
  (``topk_neighbours`` for linear, ``rule_neighbours`` for the GLR2020 rules),
  plus the GLR2020 rules at their published k (3 and 5). The chance bar is
  what guessing a training landmark reaches in 1 draw of 100.
- no ``--data``: the embedded sample, below.

The sample's test images are random views of the very photos its training
images are views of, and its non-landmark test images are views of the photos
the distractor index is made from: retrieval is flattered here, and with a
few dozen test images one image moves GAP by a few points. This table says the
options run end to end and how they move on this data, not which one wins on
GLDv2.

Two tiny EfficientNetV2-B0 models are trained here on every training image
(helpers.train_tiny_model): A at 32 px, B at 40 px, with seeds from ``--seed``. For each
model set and TTA mode the training shards and the non-landmark views are
indexed with that same set and mode (B of the 1st-place rule against those
non-landmarks), and ``predict`` runs with the classifier alone and with each rule.

    python benchmarks/rules.py [--out runs/rules] [--epochs 12] [--seed 0]
    python benchmarks/rules.py --data ../shared/realdata/oxparis --model runs/lite0-oxparis [--k 3,5] \
        [--out runs/rules-real]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import chance_bar, distractor_folder, train_tiny_model, write_shards  # noqa: E402

RULES = ("linear", "glr2020_1st", "glr2020_3rd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/rules")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--test-per-class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="sample seed; the models get 2·seed and 2·seed + 1")
    parser.add_argument("--data", help="GLDv2-layout folder of real photos with distractors/ (e.g. oxparis)")
    parser.add_argument("--model", action="append", help="with --data: a model folder trained on its train set; "
                                                         "twice: each alone and the two as an ensemble")
    parser.add_argument("--k", default="3,5", help="with --data: neighbours every rule gets, comma-separated")
    args = parser.parse_args()
    if args.data:
        real(args)
        return

    import keras

    from landmark_kaggle.data.sample import make_sample
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score
    from landmark_kaggle.infer.embed_index import build_index
    from landmark_kaggle.infer.predict import predict

    out = Path(args.out)
    root = out / "sample"
    info = make_sample(root, num_classes=args.classes, max_per_class=20, test_per_class=args.test_per_class,
                       nonlandmark_test=args.classes * args.test_per_class, image_size=(48, 64), seed=args.seed)
    tfrec = out / "tfrec"
    if not (tfrec / "label_map.csv").is_file():
        write_shards(root, tfrec)
    dis_images = out / "distractor_images"
    if not dis_images.is_dir():
        distractor_folder(dis_images, n=48)
    models = {}
    for name, seed, size in (("A", 2 * args.seed, 32), ("B", 2 * args.seed + 1, 40)):
        folder = out / f"model_{name}"
        if not (folder / "label_map.csv").is_file():
            keras.utils.set_random_seed(seed)
            train_tiny_model(root, folder, epochs=args.epochs, image_size=size)
        models[name] = folder
    solution = read_solution(root / "solution.csv")
    table = []
    for names in (("A",), ("B",), ("A", "B")):
        dirs = [models[n] for n in names]
        for tta in ("none", "flip"):
            tag = "+".join(names) + f"-{tta}"
            sets = [f"inference.tta={tta}"]
            dis, idx = out / "indexes" / f"dis-{tag}", out / "indexes" / f"index-{tag}"
            build_index(dirs, dis, images=str(dis_images), overrides=sets)
            build_index(dirs, idx, data=str(tfrec), nonlandmarks=dis, overrides=sets)
            row = {"models": " + ".join(names), "tta": tta}
            for rule in ("classifier", *RULES):
                sub = out / "submissions" / f"{tag}-{rule}.csv"
                extra = {} if rule == "classifier" else {"index": idx, "distractors": dis}
                predict(dirs, sub, images=root / "test", ids_csv=root / "sample_submission.csv",
                        overrides=[*sets, f"inference.scoring={'linear' if rule == 'classifier' else rule}"],
                        **extra)
                row[rule] = score(solution, read_submission(sub))["gap"]
            table.append(row)
            print(row, flush=True)
    n_test = len(solution)
    n_land = int((solution["landmarks"].map(len) > 0).sum())
    print(f"\nsample seed {args.seed}: {info.get('train_images', '?')} training images, {args.classes} landmarks, "
          f"{n_test} test images ({n_land} landmark, {n_test - n_land} non-landmark); models: A = EfficientNetV2-B0 "
          f"32 px seed {2 * args.seed}, B = EfficientNetV2-B0 40 px seed {2 * args.seed + 1}, {args.epochs} epochs "
          "each, 32-d neck")
    print("\n| models | TTA | classifier alone | linear | glr2020_1st | glr2020_3rd |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['models']} | {r['tta']} | {r['classifier']:.4f} | {r['linear']:.4f} | {r['glr2020_1st']:.4f} "
              f"| {r['glr2020_3rd']:.4f} |")


def real(args) -> None:
    """The fair table on real photos: every rule at the same k, each model set and TTA mode."""
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score
    from landmark_kaggle.infer.embed_index import build_index
    from landmark_kaggle.infer.predict import predict

    if not args.model:
        raise SystemExit("--data needs --model (a model folder trained on its train set)")
    data, out = Path(args.data), Path(args.out)
    solution = read_solution(data / "solution.csv")
    bar = chance_bar(data / "solution.csv", data / "train.csv")
    ks = [int(k) for k in args.k.split(",") if k]
    sets = [[m] for m in args.model] + ([list(args.model)] if len(args.model) > 1 else [])
    runs = [("classifier", [])]
    for k in ks:
        runs += [(f"linear k={k}", ["inference.scoring=linear", f"inference.topk_neighbours={k}"]),
                 (f"glr2020_1st k={k}", ["inference.scoring=glr2020_1st", f"inference.rule_neighbours={k}"]),
                 (f"glr2020_3rd k={k}", ["inference.scoring=glr2020_3rd", f"inference.rule_neighbours={k}"])]
    runs += [("glr2020_1st published (k=3)", ["inference.scoring=glr2020_1st"]),
             ("glr2020_3rd published (k=5)", ["inference.scoring=glr2020_3rd"])]
    table = []
    for dirs in sets:
        for tta in ("none", "flip"):
            tag = "+".join(Path(d).name for d in dirs) + f"-{tta}"
            dis = out / "indexes" / f"dis-{tag}"
            build_index(dirs, dis, images=str(data / "distractors"), overrides=[f"inference.tta={tta}"])
            for name, sets_ in runs:
                sub = out / "submissions" / f"{tag}-{name.replace(' ', '_')}.csv"
                # The classifier alone: no index, no non-landmark penalty.
                extra = {} if not sets_ else {"distractors": dis, "competition": data,
                                              "competition_index": out / "indexes" / f"train-{tag}"}
                where = ["inference.index_from=competition"] if sets_ else []
                summary = predict(dirs, sub, images=data / "test", ids_csv=data / "sample_submission.csv",
                                  overrides=[f"inference.tta={tta}", *where, *sets_], **extra)
                gap = score(solution, read_submission(sub))["gap"]
                table.append({"models": " + ".join(Path(d).name for d in dirs), "tta": tta, "rule": name,
                              "gap": gap, "no_prediction": summary["no_prediction"]})
                print(table[-1], flush=True)
    n_land = int((solution["landmarks"].map(len) > 0).sum())
    print(f"\n{data}: {len(solution)} test images ({n_land} landmark), chance bar (guessing, 99th percentile) "
          f"{bar:.4f}")
    print("\n| models | TTA | rule | GAP | no prediction |\n| --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['models']} | {r['tta']} | {r['rule']} | {r['gap']:.4f} | {r['no_prediction']} |")


if __name__ == "__main__":
    main()
