"""``landmark-kaggle embed-index``: embed training shards (or a folder of images) into a retrieval index.

``embed-index --model MODEL_DIR --data TFREC_DIR --out INDEX`` runs the
model's L2-normalised ``embedding`` over every training (and validation)
record and stores the vectors in an embeddings store (``embstore``: chunked
float16, resumable after a kill) plus ``landmark_ids.npy`` and ``index.json``.
``--images DIR`` embeds a folder of JPEGs instead, with landmark id -1: that
is how a set of non-landmark distractors is indexed for ``predict --distractors``.
Search and scoring live in ``retrieval.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from landmark_kaggle.embstore import StoreWriter
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_write_json
from landmark_kaggle.retrieval import INDEX_META, LANDMARK_IDS


def _embed_batches(embed_fn, dataset, writer: StoreWriter, ids: np.ndarray, batch_size: int) -> int:
    """Fill every pending chunk of writer; an unreadable image leaves a NaN row and a failed entry."""
    from landmark_kaggle.inference import iterate_batches

    row_of = {v: i for i, v in enumerate(ids.tolist())}
    failed_total = 0
    pending = writer.pending()
    bar = tqdm(total=len(ids), desc="embed-index", unit="img")
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


def build_index(model_dir: str | os.PathLike, out: str | os.PathLike, *, data=None,
                images: str | None = None, splits: tuple[str, ...] = ("train", "validation"),
                batch_size: int | None = None, chunk_size: int = 8192) -> dict:
    """Embed training shards (one or several folders, ``pipeline.DataDirs``) or an image folder with the model;
    resumable. Returns a summary dict."""
    from landmark_kaggle import pipeline as P
    from landmark_kaggle.inference import load_for_inference, probe_embedding

    bundle = load_for_inference(model_dir)
    batch_size = batch_size or bundle.config.inference.batch_size
    if (data is None) == (images is None):
        raise UserError("give exactly one of --data TFREC_DIR or --images DIR")
    if data is not None:
        files = P.shard_files(data, splits)
        ids, lids = P.tfrec_ids(files)

        def dataset(start, stop):
            return P.tfrec_eval_dataset(files, bundle.config.data, skip=start, take=stop - start)
    else:
        ids, paths, skipped = P.list_images(images)
        if skipped:
            print(f"embed-index: {len(skipped)} file(s) in {images} skipped: names are not 16-hex ids "
                  f"(first: {skipped[0]})")
        lids = np.full(len(ids), -1, np.int64)

        def dataset(start, stop):
            return P.image_folder_dataset(ids[start:stop], paths[start:stop], bundle.config.data)
    if len(ids) == 0:
        raise UserError(f"nothing to embed in {data or images}")
    out = Path(out)
    probe = probe_embedding(bundle)
    meta = {"backend": f"model:{Path(model_dir).resolve()}", "weights_sha256": bundle.model_sha,
            "image_size": bundle.config.data.image_size,
            "source": str(images) if data is None else ", ".join(P.resolve_data_dirs(data))}
    writer = StoreWriter(out, ids, meta, dim=int(probe.shape[-1]), chunk_size=chunk_size, probe=probe)
    np.save(out / LANDMARK_IDS, lids)
    failed = _embed_batches(lambda x: bundle.embed_fn(x)[1], dataset, writer, ids, batch_size)
    writer.finalize()
    summary = {"rows": len(ids), "failed": failed, "dim": int(probe.shape[-1]), "landmarks": int(len(set(lids) - {-1}))}
    atomic_write_json(out / INDEX_META, {**meta, **summary})
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (model.weights.h5, config.json, label_map.csv)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="TFREC_DIR",
                     help="TFRecord folder(s) or globs (parts of one build): embeds their train and validation shards")
    src.add_argument("--images", help="folder of <id>.jpg (any depth), indexed as non-landmarks (landmark id -1)")
    parser.add_argument("--out", required=True, help="index folder (resumable: rerun the same command after a kill)")
    parser.add_argument("--splits", default="train,validation", help="shard splits to embed (default: both)")
    parser.add_argument("--batch-size", type=int, help="default: inference.batch_size from the model's config")
    parser.add_argument("--chunk-size", type=int, default=8192, help="rows per resumable chunk")


def run(args: argparse.Namespace) -> int:
    s = build_index(args.model, args.out, data=args.data, images=args.images,
                    splits=tuple(x for x in args.splits.split(",") if x), batch_size=args.batch_size,
                    chunk_size=args.chunk_size)
    print(f"embed-index: {s['rows']} images ({s['landmarks']} landmarks) → {args.out}, dim {s['dim']}, "
          f"{s['failed']} unreadable")
    return 0
