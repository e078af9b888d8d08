"""``landmark-kaggle embed-index``: embed training shards (or a folder of images) into a retrieval index.

``embed-index --model MODEL_DIR --data TFREC_DIR --out INDEX`` runs the
model's L2-normalised ``embedding`` over every training (and validation)
record and stores the vectors in an embeddings store (``embstore``: chunked
float16, resumable after a kill) plus ``landmark_ids.npy`` and ``index.json``.
``--images DIR`` embeds a folder of JPEGs instead, with landmark id -1: that
is how a set of non-landmark distractors is indexed for ``predict --distractors``.

``--model`` repeated builds the index of an ensemble (``ensemble.py``: the
members' unit embeddings concatenated; ``predict`` must get the same models in
the same order), and ``--set inference.tta=flip`` embeds each image with its
mirror. ``--nonlandmarks DISTRACTOR_INDEX`` also stores B of the GLR2020
1st-place rule (``nonlandmark_sim.npy``, each row's mean top-5 similarity to
those non-landmarks); on a finished index only B is computed.
Search and scoring live in ``search.py``, ``retrieval.py`` and ``scoring.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from landmark_kaggle.data.embstore import StoreWriter
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_write_json
from landmark_kaggle.infer.retrieval import INDEX_META, LANDMARK_IDS, NONLANDMARK_SIM, RetrievalIndex, load_checked


def _embed_batches(embed_fn, dataset, writer: StoreWriter, ids: np.ndarray, batch_size: int, desc: str) -> int:
    """Fill every pending chunk of writer; an unreadable image leaves a NaN row and a failed entry."""
    from landmark_kaggle.infer.embedder import iterate_batches

    row_of = {v: i for i, v in enumerate(ids.tolist())}
    failed_total = 0
    pending = writer.pending()
    bar = tqdm(total=len(ids), desc=desc, unit="img")
    bar.update(len(ids) - sum(writer.chunk_rows(k).stop - writer.chunk_rows(k).start for k in pending))
    for k in pending:
        sl = writer.chunk_rows(k)
        rows = np.full((sl.stop - sl.start, writer.meta["dim"]), np.nan, np.float32)
        seen = set()
        for batch_ids, emb in iterate_batches(embed_fn, dataset(sl.start, sl.stop), batch_size):
            for i, e in zip(batch_ids, emb, strict=True):
                rows[row_of[i] - sl.start] = e
                seen.add(i)
            bar.update(len(batch_ids))
        failed = [(i, "unreadable image") for i in ids[sl].tolist() if i not in seen]
        bar.update(len(failed))
        failed_total += len(failed)
        writer.write_chunk(k, rows, failed)
    bar.close()
    return failed_total


def embed_into_store(embedder, out: str | os.PathLike, ids: np.ndarray, landmark_ids: np.ndarray, dataset, *,
                     source: str, batch_size: int, chunk_size: int, desc: str = "embed-index") -> dict:
    """Embed ``dataset(start, stop)`` (id, views) into an index folder with ``embedder``; resumable. The summary."""
    if len(ids) == 0:
        raise UserError(f"nothing to embed in {source}")
    out = Path(out)
    probe = embedder.probe()
    meta = {"backend": embedder.backend(), "weights_sha256": embedder.weights_sha(),
            "image_size": embedder.views[0].image_size, "source": source, **embedder.describe()}
    writer = StoreWriter(out, ids, meta, dim=int(probe.shape[-1]), chunk_size=chunk_size, probe=probe)
    np.save(out / LANDMARK_IDS, landmark_ids)
    failed = _embed_batches(lambda x: embedder.embed(x)[1], dataset, writer, ids, batch_size, desc)
    writer.finalize()
    summary = {"rows": len(ids), "failed": failed, "dim": int(probe.shape[-1]),
               "landmarks": int(len(set(landmark_ids.tolist()) - {-1}))}
    previous = _read_info(out)
    atomic_write_json(out / INDEX_META, {**meta, **summary, **{k: previous[k] for k in ("nonlandmarks",)
                                                                if k in previous}})
    return summary


def _read_info(folder: Path) -> dict:
    import json

    path = folder / INDEX_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_nonlandmark_sims(index_dir, distractors_dir, embedder) -> dict:
    """B of every row of an index: its mean top-5 similarity to the non-landmark index; stored beside it."""
    from landmark_kaggle.infer.scoring import FIRST_B_TOP
    from landmark_kaggle.infer.search import DeviceIndex, mean_top_similarity

    index_dir = Path(index_dir)
    index = RetrievalIndex(index_dir)
    dis = load_checked(distractors_dir, embedder)
    if not len(dis):
        raise UserError(f"{distractors_dir}: the non-landmark index has no usable rows")
    b = np.full(len(index.ok), np.nan, np.float32)
    b[index.ok] = mean_top_similarity(index.matrix, DeviceIndex(dis.matrix), FIRST_B_TOP)
    np.save(index_dir / NONLANDMARK_SIM, b)
    record = {"path": str(Path(distractors_dir).resolve()), "ids_sha256": dis.meta["ids_sha256"], "rows": len(dis),
              "top": FIRST_B_TOP, "file": NONLANDMARK_SIM}
    atomic_write_json(index_dir / INDEX_META, {**_read_info(index_dir), "nonlandmarks": record})
    return record


def build_index(model_dir, out: str | os.PathLike, *, data=None, images: str | None = None,
                splits: tuple[str, ...] = ("train", "validation"), batch_size: int | None = None,
                chunk_size: int = 8192, nonlandmarks: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Embed training shards (one or several folders, ``pipeline.DataDirs``) or an image folder with one model
    folder or a list of them (an ensemble); resumable. Returns a summary dict."""
    from landmark_kaggle.data import pipeline as P
    from landmark_kaggle.infer.ensemble import load_embedder

    if (data is None) == (images is None):
        raise UserError("give exactly one of --data TFREC_DIR or --images DIR")
    if nonlandmarks is not None and images is not None:
        raise UserError("--nonlandmarks is for an index of landmarks (--data); B of non-landmark rows means nothing")
    if data is not None:
        P.read_data_label_map(data)  # several folders: the parts of one build, else an error naming two maps
    embedder = load_embedder(model_dir, overrides)
    batch_size = batch_size or embedder.config.inference.batch_size
    if data is not None:
        files = P.shard_files(data, splits)
        ids, lids = P.tfrec_ids(files)

        def dataset(start, stop):
            return P.tfrec_eval_dataset(files, embedder.data_cfg, skip=start, take=stop - start)
        source = ", ".join(P.resolve_data_dirs(data))
    else:
        ids, paths, skipped = P.list_images(images)
        if skipped:
            print(f"embed-index: {len(skipped)} file(s) in {images} skipped: names are not 16-hex ids "
                  f"(first: {skipped[0]})")
        lids = np.full(len(ids), -1, np.int64)

        def dataset(start, stop):
            return P.image_folder_dataset(ids[start:stop], paths[start:stop], embedder.data_cfg)
        source = str(images)
    summary = embed_into_store(embedder, out, ids, lids, dataset, source=source, batch_size=batch_size,
                               chunk_size=chunk_size)
    if nonlandmarks is not None:
        summary["nonlandmarks"] = write_nonlandmark_sims(out, nonlandmarks, embedder)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, action="append",
                        help="model folder (model.weights.h5, config.json, label_map.csv); repeat for an ensemble")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="TFREC_DIR",
                     help="TFRecord folder(s) or globs (parts of one build): embeds their train and validation shards")
    src.add_argument("--images", help="folder of <id>.jpg (any depth), indexed as non-landmarks (landmark id -1)")
    parser.add_argument("--out", required=True, help="index folder (resumable: rerun the same command after a kill)")
    parser.add_argument("--nonlandmarks", metavar="DISTRACTOR_INDEX",
                        help=f"non-landmark index (embed-index --images): store B of the GLR2020 1st-place rule "
                             f"as {NONLANDMARK_SIM}")
    parser.add_argument("--splits", default="train,validation", help="shard splits to embed (default: both)")
    parser.add_argument("--batch-size", type=int, help="default: inference.batch_size from the model's config")
    parser.add_argument("--chunk-size", type=int, default=8192, help="rows per resumable chunk")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="an inference setting, e.g. --set inference.tta=flip")


def run(args: argparse.Namespace) -> int:
    s = build_index(args.model if len(args.model) > 1 else args.model[0], args.out, data=args.data,
                    images=args.images, splits=tuple(x for x in args.splits.split(",") if x),
                    batch_size=args.batch_size, chunk_size=args.chunk_size, nonlandmarks=args.nonlandmarks,
                    overrides=args.overrides)
    extra = f", B against {s['nonlandmarks']['rows']} non-landmarks" if "nonlandmarks" in s else ""
    print(f"embed-index: {s['rows']} images ({s['landmarks']} landmarks) → {args.out}, dim {s['dim']}, "
          f"{s['failed']} unreadable{extra}")
    return 0
