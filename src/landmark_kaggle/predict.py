"""Inference: a model folder (plus an optional retrieval index) → a competition ``submission.csv``.

Image size and preprocessing come from the model folder's ``config.json``
(the pipeline's eval path, unchanged); images stream through tf.data in
batches. Each image's landmark is the top class of the cosine classifier, its
confidence that class's cos θ; with ``--index`` the classifier's cos θ is
blended with the votes of the image's nearest training images, and with
``--distractors`` images that resemble known non-landmarks lose confidence
(see ``retrieval``). Every test image gets a row: one that cannot be read
gets an empty prediction and is counted in the summary. ``inference.*``
settings (batch_size, topk_neighbours, retrieval_weight, nonlandmark_weight)
can be changed with ``--set``.

``--kaggle`` takes everything from the Kaggle roots (``landmark_kaggle.paths``):
the model, index and distractor datasets under the input root, the
competition's test images and sample_submission.csv, and writes
``submission.csv`` into the working root.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from landmark_kaggle import paths, retrieval
from landmark_kaggle.errors import UserError


def _find_datasets(root: Path, marker: str) -> list[Path]:
    found = [p.parent for depth in ("*", "*/*", "*/*/*") for p in root.glob(f"{depth}/{marker}")]
    return sorted(set(found))


def kaggle_inputs() -> dict:
    """Locate model, index, distractors, test images and output from the Kaggle roots."""
    root = paths.kaggle_input_root()
    from landmark_kaggle.model import MODEL_FILE

    models = _find_datasets(root, MODEL_FILE)
    if len(models) != 1:
        raise UserError(f"expected one model folder (model.keras) under {root}, found {[str(m) for m in models]}")
    index, distractors = None, None
    for folder in _find_datasets(root, retrieval.INDEX_META):
        meta = json.loads((folder / retrieval.INDEX_META).read_text(encoding="utf-8"))
        if meta.get("landmarks", 0) > 0:
            index = index or folder
        else:
            distractors = distractors or folder
    comp = paths.competition_data_dir()
    return {"model": models[0], "index": index, "distractors": distractors, "images": comp / "test",
            "ids": comp / "sample_submission.csv", "out": paths.kaggle_working_root() / "submission.csv"}


def predict(model_dir, out, *, images=None, tfrec=None, ids_csv=None, index=None, distractors=None,
            overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Write the submission; returns the summary (counts, images/s, settings)."""
    from landmark_kaggle import pipeline
    from landmark_kaggle.inference import iterate_batches, load_for_inference, probe_embedding

    bundle = load_for_inference(model_dir, overrides)
    inf = bundle.config.inference
    data_cfg = bundle.config.data
    if (images is None) == (tfrec is None):
        raise UserError("give exactly one of --images DIR or --tfrec PATTERN")
    skipped: list[str] = []
    if images is not None:
        ids, files, skipped = pipeline.list_images(images)
        dataset = pipeline.image_folder_dataset(ids, files, data_cfg)
    else:
        files = pipeline.tfrec_files(tfrec)
        ids, _ = pipeline.tfrec_ids(files)
        dataset = pipeline.tfrec_eval_dataset(files, data_cfg)
    expected = list(dict.fromkeys(ids.tolist()))
    if ids_csv is not None:
        listed = pd.read_csv(ids_csv, dtype=str, keep_default_na=False)
        if "id" not in listed.columns:
            raise UserError(f"{ids_csv}: no 'id' column (columns: {', '.join(map(str, listed.columns))})")
        listed = listed["id"].tolist()
        extra = set(expected) - set(listed)
        if extra:
            print(f"predict: {len(extra)} image(s) not in {ids_csv} are left out (first: {sorted(extra)[0]})")
        expected = listed
    num_classes = len(bundle.label_map)
    lm_ids = bundle.label_map["landmark_id"].to_numpy(np.int64)
    idx = retrieval.RetrievalIndex(index, bundle.label_map) if index else None
    dis = retrieval.RetrievalIndex(distractors) if distractors else None
    if idx is not None or dis is not None:
        probe = probe_embedding(bundle)
        for ix in (idx, dis):
            if ix is not None:
                ix.check_model(probe, bundle.model_sha)
    best_lid, best_conf = {}, {}
    start = time.perf_counter()
    with tqdm(total=len(ids), desc="predict", unit="img") as bar:
        for batch_ids, (cos, emb) in iterate_batches(bundle.embed_fn, dataset, inf.batch_size):
            votes, closeness = None, None
            if idx is not None and len(idx):
                sims, rows = retrieval.search(emb, idx.matrix, inf.topk_neighbours)
                votes, closeness = retrieval.vote(sims, rows, idx.labels, num_classes), sims.mean(axis=1)
            scores = retrieval.combine(cos, votes, inf.retrieval_weight if votes is not None else 0.0)
            top = scores.argmax(axis=1)
            conf = scores[np.arange(len(top)), top]
            if dis is not None and len(dis):
                ref = closeness if closeness is not None else cos[np.arange(len(top)), top]
                conf = conf - retrieval.nonlandmark_penalty(emb, dis.matrix, inf.topk_neighbours,
                                                            inf.nonlandmark_weight, ref)
            for i, t, c in zip(batch_ids, top.tolist(), conf.tolist(), strict=True):
                best_lid[i], best_conf[i] = int(lm_ids[t]), float(c)
            bar.update(len(batch_ids))
        bar.update(len(ids) - bar.n)  # the unreadable ones, so the bar ends full
    seconds = time.perf_counter() - start
    from landmark_kaggle.submission import write_submission

    out = Path(out)
    write_submission(out, expected, [best_lid.get(i, -1) for i in expected], [best_conf.get(i, 0.0) for i in expected])
    unreadable = sum(1 for i in expected if i not in best_lid)
    summary = {
        "images": len(expected), "predicted": len(expected) - unreadable, "unreadable": unreadable,
        "skipped_names": len(skipped), "seconds": round(seconds, 3),
        "images_per_second": round((len(best_lid) / seconds) if seconds > 0 else 0.0, 2),
        "retrieval": bool(idx is not None), "index_rows": len(idx) if idx is not None else 0,
        "distractor_rows": len(dis) if dis is not None else 0, "model": str(model_dir),
        # Index rows that cannot vote: unreadable when indexed (NaN), or of a landmark the model lacks.
        "index_rows_dropped": (idx.dropped + idx.unknown) if idx is not None else 0,
        "inference": dict(vars(replace(inf))),
    }
    out.with_name(out.stem + ".predict.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (model.keras, config.json, label_map.csv)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder of test images <id>.jpg, any depth (GLDv2's test/a/b/c/ works)")
    src.add_argument("--tfrec", nargs="+", metavar="PATTERN",
                     help="TFRecord shard files or globs holding the test images")
    parser.add_argument("--ids", help="CSV with an id column (e.g. sample_submission.csv): the rows to write; "
                                      "an id with no readable image gets an empty prediction")
    parser.add_argument("--out", default="submission.csv", help="submission file (default: submission.csv)")
    parser.add_argument("--index", help="retrieval index from embed-index: re-rank with nearest training images")
    parser.add_argument("--distractors", help="index of non-landmark images (embed-index --images): "
                                              "lowers the confidence of test images that resemble them")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="override an inference setting, e.g. --set inference.retrieval_weight=0.7")
    parser.add_argument("--kaggle", action="store_true",
                        help="inside a Kaggle kernel: find model, index, test images and output by the Kaggle roots")


def run(args: argparse.Namespace) -> int:
    if args.kaggle:
        found = kaggle_inputs()
        for key in ("model", "index", "distractors", "ids", "out"):
            if getattr(args, key, None) is None or key in ("model", "out"):
                setattr(args, key, found[key])
        if args.tfrec is None:
            args.images = found["images"]
        if not Path(args.ids).is_file():
            args.ids = None
        import landmark_kaggle

        print(f"predict --kaggle: package {Path(landmark_kaggle.__file__).parent}, model {args.model}, "
              f"index {args.index}, distractors {args.distractors}")
    if not args.model:
        raise UserError("--model is required (or --kaggle)")
    s = predict(args.model, args.out, images=args.images, tfrec=args.tfrec, ids_csv=args.ids, index=args.index,
                distractors=args.distractors, overrides=args.overrides)
    print(f"predict: {s['images']} images, {s['predicted']} predicted, {s['unreadable']} unreadable (empty "
          f"prediction), {s['skipped_names']} files skipped (not ids), {s['images_per_second']:.1f} images/s, "
          f"retrieval {'on' if s['retrieval'] else 'off'} → {args.out}")
    return 0
