"""Inference: model folders (plus retrieval indexes) → a competition ``submission.csv``.

Image size and preprocessing come from each model folder's ``config.json``
(the pipeline's eval path, unchanged); images stream through tf.data in
batches, and every ``inference.query_block`` images (sized to memory) are
searched at once against the index, which stays on the device
(``search.DeviceIndex``). The answer per image follows ``inference.scoring``
(``scoring.py``): ``linear`` (default: the classifier's top class and cos θ,
blended with the neighbours' votes when there is an index; ``--distractors``
lowers the confidence of images that resemble known non-landmarks),
``glr2020_1st`` or ``glr2020_3rd``. ``--model`` repeated predicts with an
ensemble; ``inference.tta=flip`` adds the mirrored image (``ensemble.py``).
``inference.index_from`` and ``inference.restrict_to_competition_train`` use
the competition's own train set (``competition.py``). Every test image gets a
row: one that cannot be read gets an empty prediction and is counted in the
summary. ``inference.*`` settings can be changed with ``--set``.

When more than ``inference.max_unreadable`` (default 1%) of the images give no
prediction, ``predict`` writes no submission and fails naming the first few
and the error each raises: a systematic decode bug must not pass for a
submission of empty rows.

``--kaggle`` fills in what the command line leaves out from the Kaggle roots
(``landmark_kaggle.paths``, inputs found by what they hold in any layout):
every model folder (several are an ensemble), the index and distractors, the
competition's folder (test images, sample_submission.csv, train.csv, train/),
and ``submission.csv`` in the working root. A value given on the command line
is never replaced.
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

from landmark_kaggle import paths
from landmark_kaggle.errors import UserError
from landmark_kaggle.infer import retrieval

# At most this many test images are held (cos θ and embeddings) between two searches.
MAX_QUERY_BLOCK = 32768


def kaggle_inputs(args: argparse.Namespace) -> None:
    """Fill what the command line left out from the Kaggle roots; a value the user gave is never replaced.

    Inputs are found by what they hold (``paths.find_inputs``), in any layout Kaggle mounts them.
    """
    found = paths.find_inputs()
    if args.model is None:
        args.model = distinct_models(found.every("model"))
    if args.index is None:
        args.index = found.optional("index")
    if args.distractors is None:
        args.distractors = found.optional("distractors")
    comp = None
    if args.images is None and args.tfrec is None:
        comp = found.one("competition")
        args.images = comp / "test"
        # The competition's id list goes with the competition's images only, never with images named by hand.
        if args.ids is None and (comp / "sample_submission.csv").is_file():
            args.ids = comp / "sample_submission.csv"
    if args.competition is None:
        args.competition = comp or found.optional("competition")
    if args.out is None:
        args.out = paths.kaggle_working_root() / "submission.csv"


def distinct_models(folders: list[Path]) -> list[Path]:
    """Model folders in path order, each set of weights once: several distinct ones are an ensemble.

    A model attached twice (as a dataset and as the training output it came
    from) has the same weights file; predicting with it twice would only
    double the work, so the first copy stands for both.
    """
    from landmark_kaggle.fileio import file_sha256
    from landmark_kaggle.model.network import WEIGHTS_FILE

    seen: dict[str, Path] = {}
    for folder in folders:
        seen.setdefault(file_sha256(Path(folder) / WEIGHTS_FILE), Path(folder))
    kept = list(seen.values())
    if len(kept) < len(folders):
        print(f"model folders: {len(folders)} attached, {len(kept)} distinct (same weights counted once)")
    return kept


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240] if text else ''}"


def why_unreadable(path, data_cfg) -> str:
    """Decode and transform one image eagerly, outside tf.data's ignore_errors, and return the error it raises."""
    import tensorflow as tf

    from landmark_kaggle.data import pipeline
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


def query_block_size(inference, num_classes: int) -> int:
    """Images embedded before one search call: their cos θ block [Q, C] float32 takes at most 1 GiB (or an
    eighth of the free memory), and at least one inference batch."""
    if inference.query_block:
        return inference.query_block
    from landmark_kaggle.infer.search import host_available_bytes

    budget = min(1 << 30, host_available_bytes() // 8)
    n = min(MAX_QUERY_BLOCK, budget // (4 * max(num_classes, 1)))
    return max(inference.batch_size, n - n % inference.batch_size)


def _test_images(images, tfrec, data_cfg):
    """(ids, dataset, names skipped, {id: file} for images, where they come from)."""
    from landmark_kaggle.data import pipeline
    if (images is None) == (tfrec is None):
        raise UserError("give exactly one of --images DIR or --tfrec PATTERN")
    if images is not None:
        ids, files, skipped = pipeline.list_images(images)
        by_id = dict(zip(ids.tolist(), files.tolist(), strict=True))
        return ids, pipeline.image_folder_dataset(ids, files, data_cfg), skipped, by_id, str(images)
    files = pipeline.tfrec_files(tfrec)
    pipeline.check_label_maps(files)
    ids, _ = pipeline.tfrec_ids(files)
    return ids, pipeline.tfrec_eval_dataset(files, data_cfg), [], {}, ", ".join(files)


def _expected_ids(ids: np.ndarray, ids_csv) -> list[str]:
    expected = list(dict.fromkeys(ids.tolist()))
    if ids_csv is None:
        return expected
    listed = pd.read_csv(ids_csv, dtype=str, keep_default_na=False)
    if "id" not in listed.columns:
        raise UserError(f"{ids_csv}: no 'id' column (columns: {', '.join(map(str, listed.columns))})")
    listed = listed["id"].tolist()
    extra = set(expected) - set(listed)
    if extra:
        print(f"predict: {len(extra)} image(s) not in {ids_csv} are left out (first: {sorted(extra)[0]})")
    return listed


def _retrieval(embedder, out, index, distractors, competition, competition_index) -> tuple:
    """The assembled ``retrieval.Retrieval`` for the settings, and notes on inputs it leaves unused."""
    from landmark_kaggle.infer import competition as comp
    inf, label_map, notes = embedder.config.inference, embedder.label_map, []
    parts, own = [], ()
    if inf.index_from in ("bundle", "both") and index:
        parts.append(retrieval.load_checked(index, embedder, label_map))
    elif inf.index_from == "both":
        raise UserError("inference.index_from=both needs the bundled index too (--index)")
    elif index:
        notes.append(f"--index {index} unused (inference.index_from={inf.index_from})")
    if (inf.index_from != "bundle" or inf.restrict_to_competition_train) and competition is None:
        raise UserError("inference.index_from=competition|both and inference.restrict_to_competition_train need "
                        "the competition folder: --competition DIR (train.csv and train/), or --kaggle")
    if inf.index_from != "bundle":
        folder = Path(competition_index) if competition_index else Path(out).parent / "competition_index"
        comp.build_index(embedder, competition, folder, batch_size=inf.batch_size)
        parts.append(retrieval.RetrievalIndex(folder, label_map))
        own = (parts[-1],)
    allowed = comp.landmark_ids(competition) if inf.restrict_to_competition_train else None
    dis = None
    if distractors and inf.scoring == "glr2020_3rd":
        notes.append(f"--distractors {distractors} unused (inference.scoring=glr2020_3rd has no non-landmark term)")
    elif distractors:
        dis = retrieval.load_checked(distractors, embedder)
    return retrieval.Retrieval(label_map, inf, embedder.scale, parts, dis, allowed, own), notes


def _blocks(embed, dataset, batch_size: int, block: int, bar):
    """(ids, cos θ, embeddings) of ``block`` images at a time, embedded batch by batch."""
    from landmark_kaggle.infer.embedder import iterate_batches

    ids, cos, emb = [], [], []
    for batch_ids, (c, e) in iterate_batches(embed, dataset, batch_size):
        ids += batch_ids
        cos.append(c)
        emb.append(e)
        bar.update(len(batch_ids))
        if len(ids) >= block:
            yield ids, np.concatenate(cos), np.concatenate(emb)
            ids, cos, emb = [], [], []
    if ids:
        yield ids, np.concatenate(cos), np.concatenate(emb)


def predict(model_dir, out, *, images=None, tfrec=None, ids_csv=None, index=None, distractors=None,
            competition=None, competition_index=None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Write the submission; returns the summary (counts, images/s, settings).

    ``model_dir``: one model folder or a list of them (an ensemble, ``ensemble.py``).
    ``competition``: the competition folder (train.csv, train/) for ``inference.index_from`` and
    ``inference.restrict_to_competition_train``; ``competition_index`` where its train set is embedded
    (default: ``competition_index`` beside ``out``).
    """
    from landmark_kaggle.infer.ensemble import load_embedder

    models = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
    embedder = load_embedder(models, overrides)
    inf = embedder.config.inference
    ids, dataset, skipped, files, source = _test_images(images, tfrec, embedder.data_cfg)
    expected = _expected_ids(ids, ids_csv)
    retr, notes = _retrieval(embedder, out, index, distractors, competition, competition_index)
    for note in notes:
        print(f"predict: {note}")
    lm_ids = embedder.label_map["landmark_id"].to_numpy(np.int64)
    block = query_block_size(inf, len(lm_ids))
    best_lid, best_conf = {}, {}
    start = time.perf_counter()
    with tqdm(total=len(ids), desc="predict", unit="img") as bar:
        for block_ids, cos, emb in _blocks(embedder.embed, dataset, inf.batch_size, block, bar):
            labels, conf = retr.score(cos, emb)
            for i, t, c in zip(block_ids, labels.tolist(), conf.tolist(), strict=True):
                best_lid[i], best_conf[i] = (int(lm_ids[t]) if t >= 0 else -1), float(c)
        bar.update(len(ids) - bar.n)  # the unreadable ones, so the bar ends full
    seconds = time.perf_counter() - start
    from landmark_kaggle.evaluate.submission import write_submission

    out = Path(out)
    missed = [i for i in expected if i not in best_lid]
    check_unreadable(missed, len(expected), inf.max_unreadable, files, embedder.data_cfg, source)
    write_submission(out, expected, [best_lid.get(i, -1) for i in expected], [best_conf.get(i, 0.0) for i in expected])
    unreadable = len(missed)
    summary = {
        "images": len(expected), "predicted": len(expected) - unreadable, "unreadable": unreadable,
        # Readable images a retrieval rule found no evidence for (every neighbour a non-landmark): empty rows.
        "no_prediction": sum(1 for i in expected if best_lid.get(i, 0) < 0 and i in best_lid),
        "skipped_names": len(skipped), "seconds": round(seconds, 3),
        "images_per_second": round((len(best_lid) / seconds) if seconds > 0 else 0.0, 2),
        "retrieval": retr.index is not None, "models": [str(m) for m in models], "model": str(models[0]),
        "query_block": block, **retr.counts, "notes": notes, "inference": dict(vars(replace(inf))),
    }
    out.with_name(out.stem + ".predict.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append",
                        help="model folder (model.weights.h5, config.json, label_map.csv); repeat for an ensemble")
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
    parser.add_argument("--competition", help="competition folder holding train.csv and train/, for "
                                              "inference.index_from=competition|both and "
                                              "inference.restrict_to_competition_train")
    parser.add_argument("--competition-index", help="where the competition's train/ is embedded "
                                                    "(default: competition_index beside --out; resumable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="override an inference setting, e.g. --set inference.scoring=glr2020_1st")
    parser.add_argument("--kaggle", action="store_true",
                        help="inside a Kaggle kernel: find whatever is not given (models, index, distractors, the "
                             "competition's test images and ids, output) among the inputs by what they hold")


def run(args: argparse.Namespace) -> int:
    if args.kaggle:
        kaggle_inputs(args)
        import landmark_kaggle

        print(f"predict --kaggle: package {Path(landmark_kaggle.__file__).parent}, "
              f"model {', '.join(map(str, args.model))}, index {args.index}, distractors {args.distractors}, "
              f"images {args.images or args.tfrec}, ids {args.ids}, competition {args.competition}, out {args.out}")
    if not args.model:
        raise UserError("--model is required (or --kaggle)")
    out = args.out or "submission.csv"
    s = predict(args.model, out, images=args.images, tfrec=args.tfrec, ids_csv=args.ids, index=args.index,
                distractors=args.distractors, competition=args.competition,
                competition_index=args.competition_index, overrides=args.overrides)
    print(f"predict: {s['images']} images, {s['predicted']} predicted, {s['unreadable']} unreadable (empty "
          f"prediction), {s['skipped_names']} files skipped (not ids), {s['images_per_second']:.1f} images/s, "
          f"retrieval {'on' if s['retrieval'] else 'off'}, scoring {s['inference']['scoring']}, "
          f"{len(s['models'])} model(s) → {out}")
    return 0
