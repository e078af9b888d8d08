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

When more than ``inference.max_unreadable`` (default 1%) of the images give no
prediction, ``predict`` writes no submission and fails naming the first few
and the error each raises: a systematic decode bug must not pass for a
submission of empty rows.

``--kaggle`` fills in what the command line leaves out from the Kaggle roots
(``landmark_kaggle.paths``, inputs found by what they hold in any layout): the
model folder, index and distractors, the competition's test images and
sample_submission.csv, and ``submission.csv`` in the working root. A value
given on the command line is never replaced.
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


def kaggle_inputs(args: argparse.Namespace) -> None:
    """Fill what the command line left out from the Kaggle roots; a value the user gave is never replaced.

    Inputs are found by what they hold (``paths.find_inputs``), in any layout Kaggle mounts them.
    """
    found = paths.find_inputs()
    if args.model is None:
        # TODO(ensemble): several model folders should all go to predict() as an ensemble once it takes a
        # list (branch infer); until then two candidates are an error that names both.
        args.model = found.one("model")
    if args.index is None:
        args.index = found.optional("index")
    if args.distractors is None:
        args.distractors = found.optional("distractors")
    if args.images is None and args.tfrec is None:
        comp = found.one("competition")
        args.images = comp / "test"
        # The competition's id list goes with the competition's images only, never with images named by hand.
        if args.ids is None and (comp / "sample_submission.csv").is_file():
            args.ids = comp / "sample_submission.csv"
    if args.out is None:
        args.out = paths.kaggle_working_root() / "submission.csv"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240] if text else ''}"


def why_unreadable(path, data_cfg) -> str:
    """Decode and transform one image eagerly, outside tf.data's ignore_errors, and return the error it raises."""
    import tensorflow as tf

    from landmark_kaggle import pipeline

    try:
        pipeline.eval_transform(pipeline.decode_image(tf.io.read_file(str(path))), data_cfg)
    except Exception as exc:  # whatever TensorFlow raises is the answer we want
        return _first_line(exc)
    return "decodes on its own; failed inside the batch pipeline"


def check_unreadable(missed: list[str], total: int, limit: float, files: dict[str, str], data_cfg,
                     source: str) -> None:
    """Raise when more than ``limit`` of ``total`` images gave no prediction, naming the first few and why."""
    if not total or len(missed) <= limit * total:
        return
    lines = []
    for i in missed[:5]:
        path = files.get(i)
        lines.append(f"{path}: {why_unreadable(path, data_cfg)}" if path else f"{i}: no such image in {source}")
    raise UserError(f"{len(missed)} of {total} images ({len(missed) / total:.1%}) gave no prediction, more than "
                    f"inference.max_unreadable = {limit:g}; no submission written. First ones:\n  "
                    + "\n  ".join(lines) + "\n(a few corrupt files are fine: raise inference.max_unreadable "
                    "with --set if that is what this is)")


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
    missed = [i for i in expected if i not in best_lid]
    check_unreadable(missed, len(expected), inf.max_unreadable,
                     dict(zip(ids.tolist(), files.tolist(), strict=True)) if images is not None else {},
                     data_cfg, str(images if images is not None else ", ".join(files)))
    write_submission(out, expected, [best_lid.get(i, -1) for i in expected], [best_conf.get(i, 0.0) for i in expected])
    unreadable = len(missed)
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
    parser.add_argument("--model", help="model folder (model.weights.h5, config.json, label_map.csv)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder of test images <id>.jpg, any depth (GLDv2's test/a/b/c/ works)")
    src.add_argument("--tfrec", nargs="+", metavar="PATTERN",
                     help="TFRecord shard files or globs holding the test images")
    parser.add_argument("--ids", help="CSV with an id column (e.g. sample_submission.csv): the rows to write; "
                                      "an id with no readable image gets an empty prediction")
    parser.add_argument("--out", help="submission file (default: submission.csv; with --kaggle in the working root)")
    parser.add_argument("--index", help="retrieval index from embed-index: re-rank with nearest training images")
    parser.add_argument("--distractors", help="index of non-landmark images (embed-index --images): "
                                              "lowers the confidence of test images that resemble them")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="override an inference setting, e.g. --set inference.retrieval_weight=0.7")
    parser.add_argument("--kaggle", action="store_true",
                        help="inside a Kaggle kernel: find whatever is not given (model, index, distractors, test "
                             "images and ids, output) among the inputs by what they hold")


def run(args: argparse.Namespace) -> int:
    if args.kaggle:
        kaggle_inputs(args)
        import landmark_kaggle

        print(f"predict --kaggle: package {Path(landmark_kaggle.__file__).parent}, model {args.model}, "
              f"index {args.index}, distractors {args.distractors}, images {args.images or args.tfrec}, "
              f"ids {args.ids}, out {args.out}")
    if not args.model:
        raise UserError("--model is required (or --kaggle)")
    out = args.out or "submission.csv"
    s = predict(args.model, out, images=args.images, tfrec=args.tfrec, ids_csv=args.ids, index=args.index,
                distractors=args.distractors, overrides=args.overrides)
    print(f"predict: {s['images']} images, {s['predicted']} predicted, {s['unreadable']} unreadable (empty "
          f"prediction), {s['skipped_names']} files skipped (not ids), {s['images_per_second']:.1f} images/s, "
          f"retrieval {'on' if s['retrieval'] else 'off'} → {out}")
    return 0
