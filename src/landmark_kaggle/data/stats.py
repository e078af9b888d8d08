"""``landmark-kaggle stats DATA``: the class-size picture of a GLDv2 folder.

Prints the poster's Table 2 (how many landmarks have K>20, 10<K<=20, 5<K<=10
and K<=5 training images) with totals, as a table or one JSON object, and draws
its Figure 2 (images per landmark, log scale) as a PNG. Reading the CSV is all
it needs; ``--check-files`` adds the parallel pass that looks for every image.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from landmark_kaggle.data import gld


def dataset_stats(index: gld.GLDIndex, missing: int | None = None) -> dict:
    counts = index.label_map["count"].to_numpy()
    buckets = gld.class_buckets(counts)
    out = {
        "source": str(index.source),
        "images": int(len(index)),
        "classes": int(len(counts)),
        "buckets": buckets,
        "images_per_class": {
            "min": int(counts.min()), "median": float(np.median(counts)),
            "mean": round(float(counts.mean()), 3), "max": int(counts.max()),
        },
    }
    if missing is not None:
        out["missing_files"] = missing
    return out


def plot_histogram(counts: np.ndarray, path: str | Path, title: str = "Images per landmark") -> Path:
    """Figure 2: landmarks by their number of training images, log-spaced bins on log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts)
    top = max(2, int(counts.max()))
    bins = np.unique(np.round(np.logspace(0, np.log10(top + 1), 40)).astype(int))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.hist(counts, bins=bins, color="#3b6ea5", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)  # a bar of height 1 stays visible on the log axis
    for edge in (5.5, 10.5, 20.5):
        ax.axvline(edge, color="#c44e52", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training images per landmark (K)")
    ax.set_ylabel("landmarks")
    ax.set_title(f"{title}: {len(counts):,} landmarks, {int(counts.sum()):,} images")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(stats: dict) -> str:
    classes = stats["classes"]
    lines = [f"{stats['images']:,} images in {classes:,} landmarks  ({stats['source']})", "",
             f"{'Image count per class':<24}{'classes':>10}{'share':>9}"]
    for name, n in stats["buckets"].items():
        lines.append(f"{name:<24}{n:>10,}{n / classes:>9.1%}")
    lines.append(f"{'total':<24}{classes:>10,}{1:>9.1%}")
    ipc = stats["images_per_class"]
    lines += ["", f"images per class: min {ipc['min']}, median {ipc['median']:g}, mean {ipc['mean']:g}, "
                  f"max {ipc['max']:,}"]
    if "missing_files" in stats:
        lines.append(f"missing image files: {stats['missing_files']:,}")
    if "plot" in stats:
        lines.append(f"histogram: {stats['plot']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="GLDv2 folder with train.csv or train_clean.csv")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: images, classes, buckets {name: classes}, images_per_class")
    parser.add_argument("--plot", help="where to write the histogram PNG (default DATA/stats/images_per_landmark.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the histogram")
    parser.add_argument("--check-files", action="store_true", help="also check that every image file exists")
    parser.add_argument("--skip-missing", action="store_true",
                        help="with --check-files: count missing files and go on instead of failing")
    parser.add_argument("--workers", type=int, default=16, help="threads for --check-files (default 16)")


def run(args: argparse.Namespace) -> int:
    index = gld.load_train_index(args.data)
    missing = None
    if args.check_files:
        index, lost = gld.drop_missing(index, args.skip_missing, workers=args.workers)
        missing = len(lost)
    stats = dataset_stats(index, missing)
    if not args.no_plot:
        target = Path(args.plot) if args.plot else Path(args.data) / "stats" / "images_per_landmark.png"
        if not args.plot and not os.access(Path(args.data), os.W_OK):
            target = Path("images_per_landmark.png")  # read-only inputs, as Kaggle mounts its datasets
        stats["plot"] = str(plot_histogram(index.label_map["count"].to_numpy(), target))
    print(json.dumps(stats, sort_keys=True) if args.json else format_table(stats))
    return 0
