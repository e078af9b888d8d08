"""Remove outliers from each landmark class with DBSCAN over image embeddings (the poster's cleaning).

Every class is clustered on its own (eps=0.33, min_samples=2, metric=cosine
by default). Rules:
  * the largest cluster is kept; noise points and smaller clusters are outliers
    (two clusters tied for largest are both kept);
  * a class where DBSCAN finds no cluster at all is kept whole: a class is never deleted;
  * classes with fewer than --min-class-size images (default 3) are not touched;
  * images whose embedding is NaN/inf/zero (e.g. unreadable at embed time) are
    not clustered and are kept; they are counted and listed in report.json.
--center subtracts the store's mean embedding first: features of a briefly
trained network share one large common direction (pairwise cosine ~0.999 on
the sample), which hides the differences DBSCAN needs.
--eps auto picks eps per class at the knee of the k-distance curve (within
0.5x..2x of 0.33); the chosen eps of every class is in classes.csv and report.json.

Outputs in --out: outliers.csv (id,landmark_id,cluster,reason), classes.csv
(one row per class), report.json (images and classes in/out overall and per
poster Table-2 bucket, settings, time, and precision/recall against noise.csv
when the data folder has one) and sheets/<landmark_id>.png contact sheets.
report.json is written last, so its presence means the run finished; the result
depends only on the store, the data and the settings, so an interrupted run is
simply run again (about 4 minutes for all of GLDv2 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from landmark_kaggle.data.embstore import MATRIX, StoreError, open_store
from landmark_kaggle.data.gld import BUCKETS, bucket_of, load_train_index
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_path, atomic_write_json
from tfrec_builder import cluster

# What the build-write kernel finds a clean output by (landmark_kaggle.paths.CLEAN_MARKERS).
OUTLIERS_CSV = "outliers.csv"
REPORT_JSON = "report.json"

DEFAULT_EPS = 0.33
# A task is a batch of classes sent to one worker; big enough to amortise process hops.
TASK_ROWS = 20000
FINITE_CHUNK = 65536


def _cluster_task(store_path: str, classes: list[tuple[int, np.ndarray]], eps: float, auto: bool,
                  min_samples: int, metric: str, mean: np.ndarray | None = None) -> list[tuple[int, float, np.ndarray]]:
    """Cluster a batch of classes; opens its own memory map so only its rows are read."""
    matrix = np.load(Path(store_path) / MATRIX, mmap_mode="r")
    out = []
    for landmark_id, rows in classes:
        x = matrix[rows] if mean is None else np.asarray(matrix[rows], np.float32) - mean
        x = cluster.prepare(x, metric)
        class_eps = cluster.auto_eps(x, eps, min_samples, metric) if auto else eps
        out.append((landmark_id, class_eps, cluster.dbscan_labels(x, class_eps, min_samples, metric)))
    del matrix
    return out


def _tasks(groups: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
    """Largest classes first (so the long ones start early), packed into batches of ~TASK_ROWS rows."""
    groups = sorted(groups, key=lambda g: -len(g[1]))
    tasks, cur, size = [], [], 0
    for g in groups:
        if cur and size + len(g[1]) > TASK_ROWS:
            tasks.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += len(g[1])
    return tasks + ([cur] if cur else [])


def _usable_store_rows(store_path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per store row: is the embedding finite and non-zero (cosine is undefined for a zero vector)?
    Also returns the mean of the usable rows, for ``center``.

    Read sequentially through a short-lived memory map per chunk, so the pages
    read do not stay resident in this process while the workers cluster.
    """
    ok = np.empty(count, dtype=bool)
    total = None
    for s in range(0, count, FINITE_CHUNK):
        matrix = np.load(Path(store_path) / MATRIX, mmap_mode="r")
        block = np.asarray(matrix[s:s + FINITE_CHUNK], dtype=np.float32)
        del matrix
        good = np.isfinite(block).all(axis=1) & (np.abs(block).max(axis=1) > 0)
        ok[s:s + len(block)] = good
        part = block[good].sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
    mean = (total / max(int(ok.sum()), 1)).astype(np.float32) if total is not None else None
    return ok, mean


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _noise_scores(data_dir: Path, ids: pd.Series, removed: set[str]) -> dict | None:
    path = data_dir / "noise.csv"
    if not path.is_file():
        return None
    noise = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "id" not in noise.columns:
        raise UserError(f"{path}: line 1: no 'id' column")
    listed = set(noise["id"]) & set(ids)
    hit = len(listed & removed)
    return {"file": str(path), "listed": len(listed), "removed": len(removed), "removed_and_listed": hit,
            "precision": hit / len(removed) if removed else None, "recall": hit / len(listed) if listed else None}


def clean_dataset(store_path, data_dir, out_dir, *, eps: float | str = DEFAULT_EPS, min_samples: int = 2,
                  metric: str = "cosine", min_class_size: int = 3, sheets: int = 8, jobs: int | None = None,
                  seed: int = 0, progress: bool = True, center: bool = False) -> dict:
    """Cluster every class, write outliers.csv, classes.csv, report.json and contact sheets; return the report."""
    start = time.time()
    auto = str(eps).lower() == "auto"
    base_eps = DEFAULT_EPS if auto else float(eps)
    if not auto and not base_eps > 0:
        raise UserError(f"--eps must be > 0 or 'auto', got {eps!r}")
    if metric not in cluster.METRICS:
        raise UserError(f"--metric must be one of {', '.join(cluster.METRICS)}, got {metric!r}")
    if min_samples < 1 or min_class_size < 1:
        raise UserError("--min-samples and --min-class-size must be >= 1")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    index = load_train_index(data_dir)
    frame = index.frame
    store = open_store(store_path)
    try:
        rows = store.rows_for(frame["id"].to_numpy())
    except StoreError as exc:
        raise StoreError(f"{exc} [data: {index.source}]") from None
    usable_all, mean = _usable_store_rows(store.path, len(store))
    usable = usable_all[rows]

    groups, too_small = [], []
    lids = frame["landmark_id"].to_numpy()
    order = np.argsort(lids, kind="stable")
    bounds = np.flatnonzero(np.diff(lids[order])) + 1
    for members in np.split(order, bounds):
        lid = int(lids[members[0]])
        members = members[usable[members]]
        if len(members) < min_class_size:
            too_small.append(lid)
        else:
            groups.append((lid, members))
    tasks = _tasks([(lid, np.sort(rows[m])) for lid, m in groups])
    jobs = jobs or os.cpu_count() or 1
    bar = tqdm(total=int(sum(len(m) for _, m in groups)), unit="img", desc="clean", disable=not progress)
    results = {}
    runner = Parallel(n_jobs=min(jobs, max(len(tasks), 1)), return_as="generator_unordered")
    for batch in runner(delayed(_cluster_task)(str(store.path), t, base_eps, auto, min_samples, metric,
                                               mean if center else None)
                        for t in tasks):
        for lid, class_eps, labels in batch:
            results[lid] = (class_eps, labels)
            bar.update(len(labels))
    bar.close()

    out_ids, out_lid, out_cluster, out_reason, class_rows = [], [], [], [], []
    for lid, members in groups:
        class_eps, labels = results[lid]
        # Task rows were sorted by store row; line the frame positions up the same way.
        pos = members[np.argsort(rows[members], kind="stable")]
        keep = cluster.main_cluster_rule(labels)
        gone = np.flatnonzero(~keep)
        out_ids.append(frame["id"].to_numpy()[pos[gone]])
        out_lid.append(np.full(len(gone), lid))
        out_cluster.append(labels[gone])
        out_reason.append(np.where(labels[gone] < 0, "noise", "minor_cluster"))
        n_clusters = int(labels.max()) + 1
        status = "no_cluster" if n_clusters == 0 else ("cleaned" if len(gone) else "unchanged")
        class_rows.append((lid, len(members), n_clusters, len(members) - len(gone), len(gone), class_eps, status))
    classes = pd.DataFrame(class_rows, columns=["landmark_id", "clustered", "clusters", "kept", "removed", "eps",
                                                "status"])
    counts = frame.groupby("landmark_id").size()
    small = pd.DataFrame({"landmark_id": too_small, "clustered": 0, "clusters": 0, "kept": 0, "removed": 0,
                          "eps": np.nan, "status": "too_small"})
    classes = pd.concat([classes, small] if too_small else [classes], ignore_index=True)
    classes.insert(1, "images", counts.reindex(classes["landmark_id"]).to_numpy())
    classes = classes.sort_values("landmark_id").reset_index(drop=True)
    classes["kept"] = classes["images"] - classes["removed"]
    outliers = pd.DataFrame({
        "id": np.concatenate(out_ids) if out_ids else np.array([], dtype=str),
        "landmark_id": np.concatenate(out_lid) if out_lid else np.array([], dtype=np.int64),
        "cluster": np.concatenate(out_cluster) if out_cluster else np.array([], dtype=np.int64),
        "reason": np.concatenate(out_reason) if out_reason else np.array([], dtype=str),
    }).sort_values(["landmark_id", "id"]).reset_index(drop=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    # A rerun recomputes everything (minutes at GLDv2 scale); what must never happen is a
    # later stage reading half a file, so each output appears whole or not at all.
    (out_dir / REPORT_JSON).unlink(missing_ok=True)
    _atomic_csv(outliers, out_dir / OUTLIERS_CSV)
    _atomic_csv(classes, out_dir / "classes.csv")
    unembedded = frame["id"].to_numpy()[~usable]
    sheet_paths = []
    if sheets > 0 and len(outliers):
        from tfrec_builder.sheets import write_contact_sheets

        sheet_paths = write_contact_sheets(frame, outliers, out_dir / "sheets", count=sheets, seed=seed)
    report = _report(frame, classes, outliers, unembedded, store, index.source, data_dir, out_dir, sheet_paths,
                     dict(eps="auto" if auto else base_eps, min_samples=min_samples, metric=metric,
                          min_class_size=min_class_size, jobs=jobs, sklearn_max_class=cluster.SKLEARN_MAX,
                          center=center))
    report["seconds"] = round(time.time() - start, 3)
    atomic_write_json(out_dir / REPORT_JSON, report)
    return report


def _report(frame, classes, outliers, unembedded, store, source, data_dir, out_dir, sheet_paths, settings) -> dict:
    buckets = {}
    bucket = classes["images"].map(bucket_of)
    for name, _, _ in BUCKETS:
        sel = classes[bucket == name]
        buckets[name] = {"classes_in": len(sel), "classes_touched": int((sel["removed"] > 0).sum()),
                         "classes_out": int((sel["kept"] == 0).sum()), "images_in": int(sel["images"].sum()),
                         "images_removed": int(sel["removed"].sum()), "images_kept": int(sel["kept"].sum())}
    status = classes["status"].value_counts()
    report = {
        "settings": dict(settings, store=str(store.path), backend=store.meta.get("backend"), data=str(source)),
        "images": {"in": len(frame), "removed": len(outliers), "kept": len(frame) - len(outliers),
                   "unembedded_kept": len(unembedded)},
        "classes": {"in": len(classes), "out": int((classes["kept"] == 0).sum()),
                    "touched": int((classes["removed"] > 0).sum()),
                    **{s: int(status.get(s, 0)) for s in ("cleaned", "unchanged", "no_cluster", "too_small")}},
        "buckets": buckets,
        "reasons": {str(k): int(v) for k, v in outliers["reason"].value_counts().items()},
        "unembedded_ids": [str(i) for i in unembedded],
        "store_ids_not_in_data": len(store) - len(frame),
        "noise": _noise_scores(data_dir, frame["id"], set(outliers["id"])),
        "eps": {"min": float(classes["eps"].min()), "median": float(classes["eps"].median()),
                "max": float(classes["eps"].max())} if classes["eps"].notna().any() else None,
        "outputs": {"outliers": str(out_dir / "outliers.csv"), "classes": str(out_dir / "classes.csv"),
                    "sheets": [str(p) for p in sheet_paths]},
    }
    if settings["eps"] == "auto":
        per = classes.dropna(subset=["eps"])
        report["eps_per_class"] = {str(k): round(float(v), 4) for k, v in zip(per["landmark_id"], per["eps"],
                                                                              strict=True)}
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, metavar="STORE", help="store written by `tfrec-builder embed`")
    parser.add_argument("--data", required=True, help="GLDv2 folder (train.csv or train_clean.csv)")
    parser.add_argument("--out", required=True, help="output folder (outliers.csv, classes.csv, report.json, sheets/)")
    parser.add_argument("--eps", default=str(DEFAULT_EPS),
                        help="DBSCAN eps (cosine distance), or 'auto' for a per-class eps (default 0.33)")
    parser.add_argument("--min-samples", type=int, default=2, help="DBSCAN min_samples (default 2)")
    parser.add_argument("--metric", default="cosine", choices=cluster.METRICS, help="distance (default cosine)")
    parser.add_argument("--min-class-size", type=int, default=3,
                        help="classes with fewer images are not touched (default 3)")
    parser.add_argument("--center", action="store_true",
                        help="subtract the mean embedding of the whole store before clustering: for embeddings that "
                             "share one large common direction (a briefly trained model: self-cleaning)")
    parser.add_argument("--sheets", type=int, default=8, help="contact sheets to draw (default 8; 0: none)")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="which classes get contact sheets")


def run(args: argparse.Namespace) -> int:
    eps = args.eps
    if eps.lower() != "auto":
        try:
            eps = float(eps)
        except ValueError:
            raise UserError(f"--eps must be a number or 'auto', got {args.eps!r}") from None
    r = clean_dataset(args.embeddings, args.data, args.out, eps=eps, min_samples=args.min_samples,
                      metric=args.metric, min_class_size=args.min_class_size, sheets=args.sheets,
                      jobs=args.jobs or None, seed=args.seed, center=args.center)
    noise = r["noise"]
    tail = ""
    if noise:
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        tail = (f"; noise.csv: {noise['removed_and_listed']} of {noise['listed']} listed ids removed "
                f"(precision {fmt(noise['precision'])}, recall {fmt(noise['recall'])})")
    print(f"clean: removed {r['images']['removed']} of {r['images']['in']} images from {r['classes']['touched']} "
          f"of {r['classes']['in']} classes ({r['images']['unembedded_kept']} unembedded kept) "
          f"in {r['seconds']:.1f}s -> {args.out}{tail}")
    return 0
