"""``write --estimate``: predict a build's shard bytes, per split and per part, from a seeded random sample.

The sample (500 images by default, all of them when there are fewer) is drawn
with ``--seed`` from the images the plan keeps and turned into records by
write's own code: the same read, the same copy-or-resize-and-re-encode, the
same record framing; nothing is written. Scaling up is post-stratified by
input file size: the plan knows every file's size, so the images are cut into
up to 10 equal-count size classes, and each class's total is its count times
the mean record size of its sampled members. Copied small files and re-encoded
large ones then count each at their own rate. A group (a split, a part) is its
sampled records as they are plus its unsampled images at their class means;
the ± figures are 95% intervals from the spread within each class (zero when
every image was prepared). Measured against full writes in
benchmarks/estimate.py.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from landmark_kaggle.data.records import SPLITS
from landmark_kaggle.errors import UserError
from tfrec_builder.failures import FailureWatch, Systematic
from tfrec_builder.parts import GB, PART_FILL, human, split_parts
from tfrec_builder.plan import check_settings, make_plan
from tfrec_builder.shard import prepared, read_ahead

MAX_STRATA = 10
PER_STRATUM = 50  # sampled images a size class needs at least
Z95 = 1.96
FRAMING = 16  # length, its CRC and the record's CRC around each record


def strata(sizes: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Size class of every image: equal-count classes by input size, each with ≥ 2 sampled members."""
    n = len(sizes)
    rank = np.empty(n, np.int64)
    rank[np.argsort(sizes, kind="stable")] = np.arange(n)
    for b in range(max(1, min(MAX_STRATA, len(picked) // PER_STRATUM)), 0, -1):
        cls = rank * b // n
        if b == 1 or np.bincount(cls[picked], minlength=b).min() >= 2:
            return cls
    raise AssertionError("unreachable")


def group_total(mask: np.ndarray, cls: np.ndarray, picked: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(predicted total bytes, half-width of its 95% interval) of the images in ``mask``.

    Sampled members count as measured; each unsampled member as its class mean.
    The variance of the unsampled part, U images of a class with n sampled and
    spread s², is s²·(U²/n + U): the class mean's error, plus each image's own.
    """
    in_sample = np.zeros(len(cls), bool)
    in_sample[picked] = True
    total = float(y[mask[picked]].sum())
    var = 0.0
    for b in np.unique(cls[mask]):
        ys = y[cls[picked] == b]
        unsampled = int((mask & ~in_sample & (cls == b)).sum())
        if not unsampled:
            continue
        s2 = float(ys.var(ddof=1)) if len(ys) > 1 else 0.0
        total += unsampled * float(ys.mean())
        var += s2 * (unsampled**2 / len(ys) + unsampled)
    return total, Z95 * math.sqrt(var)


def _measure(rows: list[tuple], image_size: int, quality: int, progress: bool) -> tuple[np.ndarray, list, Counter]:
    """Record bytes of each row (0 when it fails), the failures, the actions: write's preparation, nothing written."""
    order = sorted(range(len(rows)), key=lambda i: rows[i][3])  # path order: one sweep over the disk
    sizes = np.zeros(len(rows), np.int64)
    failed, actions = [], Counter()
    datas = read_ahead([rows[i][3] for i in order])
    results = prepared([rows[i] for i in order], datas, image_size, quality)
    for i, (action, payload) in tqdm(zip(order, results, strict=True), total=len(rows), unit="img",
                                     desc="estimate", disable=not progress):
        actions[action] += 1
        if action == "failed":
            failed.append({"id": rows[i][0], "reason": payload, "path": rows[i][3]})
        else:
            sizes[i] = FRAMING + sum(len(p) for p in payload)
    return sizes, failed, actions


def estimate_build(data_dir, *, outliers=None, image_size: int = 512, quality: int = 90, shard_mb: float = 100,
                   val_fraction: float = 0.02, seed: int = 0, max_part_gb: float = 19.0, sample: int = 500,
                   progress: bool = True) -> dict:
    """Predicted bytes of the build ``write`` would make with these settings, and of each of its parts."""

    check_settings(image_size, quality, shard_mb, val_fraction, max_part_gb)
    if sample < 1:
        raise UserError(f"--estimate-sample {sample} must be >= 1")
    started = time.time()
    plan = make_plan(data_dir, outliers=outliers, image_size=image_size, quality=quality, shard_mb=shard_mb,
                     val_fraction=val_fraction, seed=seed)
    groups = split_parts(plan.shards, max_part_gb)
    part_of = {s.name: k for k, g in enumerate(groups) for s in g}
    frames = [s.frame.assign(split=SPLITS.index(s.split), part=part_of[s.name]) for s in plan.shards]
    split = np.concatenate([f["split"].to_numpy() for f in frames])
    part = np.concatenate([f["part"].to_numpy() for f in frames])
    sizes_in = np.concatenate([f["size"].to_numpy() for f in frames])
    rows = [r for f in frames for r in f[["id", "landmark_id", "label", "path"]].itertuples(index=False, name=None)]
    n = len(rows)
    picked = np.sort(np.random.default_rng([seed, 3]).choice(n, size=min(sample, n), replace=False))
    measured, failed, actions = _measure([rows[i] for i in picked], image_size, quality, progress)
    watch = FailureWatch()
    watch.add(len(picked), failed)
    try:
        watch.check(final=True)
    except Systematic as exc:
        raise UserError(f"write would stop: {exc.describe({f['id']: f['path'] for f in failed})}") from None
    y = measured.astype(np.float64)  # in the order of ``picked``
    cls = strata(sizes_in, picked)

    def total(mask):
        t, h = group_total(mask, cls, picked, y)
        return {"images": int(mask.sum()), "bytes": t, "ci95": h}

    everything = total(np.ones(n, bool))
    parts = [total(part == k) | {"part": k + 1, "planned_bytes": sum(s.planned_bytes for s in g)}
             for k, g in enumerate(groups)]
    cap = max_part_gb * GB
    worst = max(p["bytes"] + p["ci95"] for p in parts)
    return {
        "images": n, "sample": len(picked), "seed": seed, "strata": int(cls.max()) + 1, "image_size": image_size,
        "quality": quality, "max_part_gb": max_part_gb, "seconds": round(time.time() - started, 2),
        "total": everything, "splits": {s: total(split == k) for k, s in enumerate(SPLITS)},
        "per_image": {"bytes": everything["bytes"] / n, "ci95": everything["ci95"] / n},
        "planned_bytes": sum(s.planned_bytes for s in plan.shards),
        "actions": dict(sorted(actions.items())), "failed": len(failed),
        "parts": parts, "parts_needed": max(1, math.ceil((everything["bytes"] + everything["ci95"]) / cap)),
        # The plan's split scaled down so that its largest part's upper bound would fit.
        "suggested_max_part_gb": _two_digits_down(max_part_gb * cap / worst) if worst > cap else None,
    }


def _two_digits_down(x: float) -> float:
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return float(f"{math.floor(x / scale) * scale:.2g}")


def format_estimate(est: dict) -> str:
    """The report ``write --estimate`` prints."""
    t, per = est["total"], est["per_image"]
    ratio = est["planned_bytes"] / t["bytes"] if t["bytes"] else float("nan")
    lines = [f"estimate: {est['sample']} of {est['images']} images prepared at --image-size {est['image_size']} "
             f"--quality {est['quality']} (seed {est['seed']}, {est['strata']} size classes, {est['seconds']:.1f} s)",
             f"  per image    {human(per['bytes'])} ± {human(per['ci95'])}"]
    for split, s in est["splits"].items():
        lines.append(f"  {split:<12} {human(s['bytes'])} ± {human(s['ci95'])}  ({s['images']} images)")
    lines.append(f"  total        {human(t['bytes'])} ± {human(t['ci95'])}  (± = 95% interval; the plan's size "
                 f"model says {human(est['planned_bytes'])}, {ratio:.2f}x)")
    acts = ", ".join(f"{v} {k}" for k, v in est["actions"].items())
    lines.append(f"  in the sample: {acts}")
    g = est["max_part_gb"]
    parts = est["parts"]
    if len(parts) == 1:
        more = est["parts_needed"]
        lines.append(f"  --max-part-gb {g:g}: one folder, no parts"
                     + (f" (but the estimate needs at least {more})" if more > 1 else ""))
    else:
        lines.append(f"  --max-part-gb {g:g}: needs at least {est['parts_needed']} parts; the plan makes {len(parts)} "
                     f"(each planned at most {PART_FILL:.0%} of the cap):")
        for p in parts:
            lines.append(f"    part {p['part']:<3} {human(p['bytes'])} ± {human(p['ci95'])}  "
                         f"(planned {human(p['planned_bytes'])}, {p['images']} images)")
    if est["suggested_max_part_gb"] is not None:
        lines.append(f"  WARNING: a folder may exceed {g:g} GB; use --max-part-gb {est['suggested_max_part_gb']:g}")
    else:
        lines.append(f"  every folder stays under {g:g} GB at the upper end of its interval")
    return "\n".join(lines)
