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
row: one that cannot be read, or whose confidence comes out NaN or infinite
(float16 inference can overflow), gets an empty prediction and is counted in
the summary. ``inference.*`` settings can be changed with ``--set``.

With ``index_from=competition|both`` the test images come first: they are
answered with what exists before the competition's train set (the bundled
index, or the classifier alone) and that complete ``submission.csv`` is
written at once. The rate of that pass and ``inference.time_limit`` (hours
from predict's start) then say how many of the competition's train images can
still be embedded, besides a second pass over the test images; at most
``inference.competition_max_images`` are (a commit run mounts the full 1.58M
training set), cut per landmark with every landmark kept, and a printed note
says so. The second pass replaces the file.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from landmark_kaggle.errors import UserError
from landmark_kaggle.infer import retrieval
from landmark_kaggle.infer.kaggle_inputs import kaggle_inputs

# At most this many test images are held (cos θ and embeddings) between two searches.
MAX_QUERY_BLOCK = 32768
# Share of the time left that the competition's train set and the second pass over the test images may plan on:
# the rate is measured on the test images, and index assembly, B and the search come on top.
TIME_SHARE = 0.9


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


def _indexes(embedder, index, distractors, competition) -> tuple[list, object, np.ndarray | None, list[str]]:
    """What retrieval uses before the competition's train set: (bundled parts, distractors, allowed landmark
    ids, notes on inputs left unused)."""
    from landmark_kaggle.infer import competition as comp
    inf, label_map, notes = embedder.config.inference, embedder.label_map, []
    parts = []
    if inf.index_from in ("bundle", "both") and index:
        parts.append(retrieval.load_checked(index, embedder, label_map))
    elif inf.index_from == "both":
        raise UserError("inference.index_from=both needs the bundled index too (--index)")
    elif index:
        notes.append(f"--index {index} unused (inference.index_from={inf.index_from})")
    if (inf.index_from != "bundle" or inf.restrict_to_competition_train) and competition is None:
        raise UserError("inference.index_from=competition|both and inference.restrict_to_competition_train need "
                        "the competition folder: --competition DIR (train.csv and train/), or --kaggle")
    allowed = comp.landmark_ids(competition) if inf.restrict_to_competition_train else None
    dis = None
    if distractors and inf.scoring == "glr2020_3rd":
        notes.append(f"--distractors {distractors} unused (inference.scoring=glr2020_3rd has no non-landmark term)")
    elif distractors:
        dis = retrieval.load_checked(distractors, embedder)
    return parts, dis, allowed, notes


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


@dataclass
class Pass:
    """One pass over the test images: each readable image's landmark id (-1: none) and confidence."""

    landmark: dict[str, int]
    confidence: dict[str, float]
    nonfinite: int  # answers dropped because their confidence was NaN or infinite
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.landmark) / self.seconds if self.seconds > 0 else 0.0


def _score_pass(embedder, dataset, retr: retrieval.Retrieval, block: int, total: int, desc: str) -> Pass:
    """Embed every test image once and answer it under ``retr``; a non-finite confidence is no answer."""
    landmark, confidence, nonfinite = {}, {}, 0
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for block_ids, cos, emb in _blocks(embedder.embed, dataset, embedder.config.inference.batch_size, block, bar):
            labels, conf = retr.score(cos, emb)
            # float16 inference can overflow to inf/NaN: that image gets an empty row, the rest still count.
            bad = (labels >= 0) & ~np.isfinite(conf)
            nonfinite += int(bad.sum())
            labels = np.where(bad, -1, labels)
            lids = np.where(labels >= 0, retr.landmark_ids[np.maximum(labels, 0)], -1)
            conf = np.where(labels >= 0, conf, 0.0)
            for i, t, c in zip(block_ids, lids.tolist(), conf.tolist(), strict=True):
                landmark[i], confidence[i] = int(t), float(c)
        bar.update(total - bar.n)  # the unreadable ones, so the bar ends full
    return Pass(landmark, confidence, nonfinite, time.perf_counter() - start)


def _write(out: Path, expected: list[str], result: Pass) -> None:
    from landmark_kaggle.evaluate.submission import write_submission

    write_submission(out, expected, [result.landmark.get(i, -1) for i in expected],
                     [result.confidence.get(i, 0.0) for i in expected])


def competition_budget(inference, rate: float, elapsed: float, test_images: int) -> int:
    """Competition train images that fit in what is left of ``inference.time_limit`` after ``elapsed`` seconds,
    at ``rate`` images/s, keeping time to embed the ``test_images`` once more (and a tenth spare)."""
    left = inference.time_limit * 3600.0 - elapsed
    return max(int(rate * left * TIME_SHARE) - test_images, 0)


def _with_competition(embedder, out, dataset, ids, expected, block, parts, dis, allowed, competition,
                      competition_index, start, notes, check) -> tuple[retrieval.Retrieval, Pass, dict]:
    """index_from=competition|both: answer every test image first with what is there (so a complete
    submission exists however the rest goes), embed as much of the competition's train set as the time left
    allows, then answer again with it."""
    from landmark_kaggle.infer import competition as comp
    inf, label_map = embedder.config.inference, embedder.label_map
    first_inf = inf
    if not parts and inf.scoring != "linear":
        first_inf = replace(inf, scoring="linear")
        notes.append(f"first pass: the classifier alone (inference.scoring={inf.scoring} needs the competition index)")
    first_retr = retrieval.Retrieval(label_map, first_inf, parts, dis if first_inf.scoring == inf.scoring else None,
                                     allowed)
    first = _score_pass(embedder, dataset, first_retr, block, len(ids), "predict (first pass)")
    check(first)
    _write(out, expected, first)
    budget = competition_budget(inf, first.rate, time.monotonic() - start, len(ids))
    cap = min(budget, inf.competition_max_images)
    folder = Path(competition_index) if competition_index else Path(out).parent / "competition_index"
    built = comp.build_index(embedder, competition, folder, batch_size=inf.batch_size, max_images=cap)
    info = {"listed": built["listed"], "embedded": built["rows"], "landmarks": built["landmarks"],
            "listed_landmarks": built["listed_landmarks"], "budget": budget,
            "max_images": inf.competition_max_images, "first_pass_seconds": round(first.seconds, 3)}
    if built["rows"] < built["listed"]:
        why = (f"inference.competition_max_images = {inf.competition_max_images}" if cap == inf.competition_max_images
               else f"the {budget} images that fit in inference.time_limit = {inf.time_limit:g} h at the measured "
                    f"{first.rate:.1f} images/s")
        notes.append(f"competition train set: {built['rows']} of {built['listed']} images embedded "
                     f"({built['landmarks']} of {built['listed_landmarks']} landmarks), cut by {why}")
        print(f"predict: {notes[-1]}")
    if not built["rows"]:
        notes.append("no competition index: the submission is the first pass's")
        return first_retr, first, info
    del first_retr  # its rows leave the device before the full index is placed there
    parts = [*parts, retrieval.RetrievalIndex(folder, label_map)]
    retr = retrieval.Retrieval(label_map, inf, parts, dis, allowed, own_b=(parts[-1],))
    return retr, _score_pass(embedder, dataset, retr, block, len(ids), "predict"), info


def predict(model_dir, out, *, images=None, tfrec=None, ids_csv=None, index=None, distractors=None,
            competition=None, competition_index=None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Write the submission; returns the summary (counts, images/s, settings).

    ``model_dir``: one model folder or a list of them (an ensemble, ``ensemble.py``).
    ``competition``: the competition folder (train.csv, train/) for ``inference.index_from`` and
    ``inference.restrict_to_competition_train``; ``competition_index`` where its train set is embedded
    (default: ``competition_index`` beside ``out``). With ``index_from=competition|both`` the test images
    are answered twice: first without the competition's train set (that submission is written at once),
    then with as much of it as ``inference.time_limit`` leaves time for (``_with_competition``).
    """
    from landmark_kaggle.infer.ensemble import load_embedder

    start = time.monotonic()
    models = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
    embedder = load_embedder(models, overrides)
    inf = embedder.config.inference
    ids, dataset, skipped, files, source = _test_images(images, tfrec, embedder.data_cfg)
    expected = _expected_ids(ids, ids_csv)
    parts, dis, allowed, notes = _indexes(embedder, index, distractors, competition)
    for note in notes:
        print(f"predict: {note}")
    block = query_block_size(inf, len(embedder.label_map))
    out = Path(out)
    comp_info = None

    def check(result: Pass) -> list[str]:
        missed = [i for i in expected if i not in result.landmark]
        check_unreadable(missed, len(expected), inf.max_unreadable, files, embedder.data_cfg, source)
        return missed

    if inf.index_from == "bundle":
        retr = retrieval.Retrieval(embedder.label_map, inf, parts, dis, allowed)
        result = _score_pass(embedder, dataset, retr, block, len(ids), "predict")
    else:
        retr, result, comp_info = _with_competition(embedder, out, dataset, ids, expected, block, parts, dis,
                                                    allowed, competition, competition_index, start, notes, check)
    missed = check(result)
    _write(out, expected, result)
    if result.nonfinite:
        print(f"predict: {result.nonfinite} image(s) got a non-finite confidence (NaN/inf): written with no "
              f"prediction (inference.precision={inf.precision})")
    unreadable = len(missed)
    summary = {
        "images": len(expected), "predicted": len(expected) - unreadable, "unreadable": unreadable,
        # Readable images with no answer: every neighbour a non-landmark, or a non-finite confidence.
        "no_prediction": sum(1 for i in expected if result.landmark.get(i, 0) < 0 and i in result.landmark),
        "nonfinite_confidence": result.nonfinite,
        "skipped_names": len(skipped), "seconds": round(result.seconds, 3),
        "images_per_second": round(result.rate, 2),
        "retrieval": retr.index is not None, "models": [str(m) for m in models], "model": str(models[0]),
        "query_block": block, **retr.counts, "competition_index": comp_info, "notes": notes,
        "inference": dict(vars(replace(inf))),
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
