"""Retrieval re-ranking: embed the training images into an index, find each test image's neighbours, vote.

``landmark-kaggle embed-index --model MODEL_DIR --data TFREC_DIR --out INDEX``
runs the model's L2-normalised ``embedding`` over every training (and
validation) record and stores the vectors in an embeddings store
(``embstore``: chunked float16, resumable after a kill) plus
``landmark_ids.npy``. ``--images DIR`` embeds a folder of JPEGs instead, with
landmark id -1: that is how a set of non-landmark distractors is indexed for
``predict --distractors``.

Scoring (every top GLDv2 solution did a version of this): for a query q with
cosine similarities s_1..s_k to its k nearest index rows, a landmark's
retrieval score is (1/k)·Σ s_i over the neighbours that carry it, so it lies in
[-1, 1] like the classifier's cos θ; the final score of each landmark is
(1 - w)·cos θ + w·retrieval. Non-landmark suppression subtracts
λ·max(0, d - r) from the confidence, where d is the mean top-k similarity to
the distractor images and r the mean top-k similarity to the index (or, with
no index, the predicted class's cos θ): an image is pushed down the ranking
when it resembles known non-landmarks more than any landmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from landmark_kaggle.clibase import UserError
from landmark_kaggle.embstore import StoreWriter, check_probe, open_store

LANDMARK_IDS = "landmark_ids.npy"
INDEX_META = "index.json"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe_image(size: int) -> np.ndarray:
    """A fixed synthetic image: its embedding fingerprints the model that made an index."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    return np.stack([255 * x, 255 * y, 255 * (x * y)], axis=-1)[None]


def search(queries: np.ndarray, matrix: np.ndarray, k: int, block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine similarity of each query against the rows of matrix (both L2-normalised), best first.

    The index is scanned in blocks, so memory stays at Q x block_rows and a
    float16 index is widened one block at a time; each block's best k join the
    running candidates. TensorFlow does the matmul and top-k: on this CPU it is
    2.4x faster than numpy's matmul + argpartition (benchmarks/predict.py), and
    in a GPU kernel it runs on the GPU with no change.
    """
    import tensorflow as tf

    queries = tf.constant(np.asarray(queries, np.float32))
    n = len(matrix)
    k = min(k, n)
    cand_s, cand_i = [], []
    for start in range(0, n, block_rows):
        block = tf.cast(tf.constant(np.asarray(matrix[start:start + block_rows])), tf.float32)
        sims, rows = tf.math.top_k(tf.matmul(queries, block, transpose_b=True), min(k, int(block.shape[0])))
        cand_s.append(sims)
        cand_i.append(tf.cast(rows, tf.int64) + start)
    sims, pos = tf.math.top_k(tf.concat(cand_s, axis=1), k)
    rows = tf.gather(tf.concat(cand_i, axis=1), pos, batch_dims=1)
    return sims.numpy(), rows.numpy()


def vote(sims: np.ndarray, rows: np.ndarray, row_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense [Q, C] retrieval scores: each neighbour adds sim / k to its class (rows with label -1 add nothing)."""
    q, k = sims.shape
    scores = np.zeros((q, num_classes), np.float32)
    labels = row_labels[rows]
    keep = labels >= 0
    qi = np.broadcast_to(np.arange(q)[:, None], labels.shape)
    np.add.at(scores, (qi[keep], labels[keep]), sims[keep] / k)
    return scores


def combine(cosines: np.ndarray, retrieval: np.ndarray | None, weight: float) -> np.ndarray:
    if retrieval is None or weight == 0:
        return np.asarray(cosines, np.float32)
    return (1.0 - weight) * np.asarray(cosines, np.float32) + weight * retrieval


def nonlandmark_penalty(queries: np.ndarray, distractors: np.ndarray, k: int, weight: float,
                        reference: np.ndarray | float = 0.0) -> np.ndarray:
    """How much to lower each query's confidence for looking more like a non-landmark than a landmark.

    ``reference`` is how close the query is to landmarks (its mean top-k
    similarity to the index, or its class's cos θ); only the part of the
    distractor similarity above it counts, so a model whose embeddings are all
    alike does not scramble the ranking with a uniform penalty.
    """
    sims, _ = search(queries, distractors, k)
    return weight * np.maximum(sims.mean(axis=1) - reference, 0.0)


class RetrievalIndex:
    """An index ready for search: float32 unit rows (failed rows dropped) and their model labels."""

    def __init__(self, path: str | os.PathLike, label_map=None):
        store = open_store(path)
        self.path = Path(path)
        self.meta = store.meta
        lids_path = self.path / LANDMARK_IDS
        if not lids_path.is_file():
            raise UserError(f"{self.path}: no {LANDMARK_IDS}; is this an embed-index output?")
        lids = np.load(lids_path)
        if len(lids) != len(store):
            raise UserError(f"{lids_path}: {len(lids)} landmark ids for {len(store)} rows")
        # Kept float16 in memory (1.6 GB at GLDv2 scale); search widens one block at a time.
        matrix = np.asarray(store.matrix)
        ok = np.isfinite(matrix).all(axis=1)
        self.dropped = int((~ok).sum())
        self.matrix, self.landmark_ids, self.ids = matrix[ok], lids[ok], store.ids[ok]
        self.probe = store.probe()
        self.labels = np.full(len(self.landmark_ids), -1, np.int64)
        self.unknown = 0
        if label_map is not None:
            lookup = dict(zip(label_map["landmark_id"].tolist(), label_map["label"].tolist(), strict=True))
            self.labels = np.array([lookup.get(int(v), -1) for v in self.landmark_ids], np.int64)
            # Rows of landmarks the model does not know cannot vote for a class it can output.
            self.unknown = int(((self.labels < 0) & (self.landmark_ids >= 0)).sum())

    def __len__(self) -> int:
        return len(self.matrix)

    def check_model(self, probe_embedding: np.ndarray, model_sha: str) -> None:
        # Same file: nothing to check. Another file may hold the same weights; the probe tells.
        if self.meta.get("weights_sha256") != model_sha and self.probe is not None:
            check_probe(self.path, self.probe, probe_embedding, self.meta.get("backend", "?"))


def _embed_batches(embed_fn, dataset, writer: StoreWriter, ids: np.ndarray, batch_size: int) -> int:
    """Fill every pending chunk of writer; an unreadable image leaves a NaN row and a failed entry."""
    from landmark_kaggle.predict import iterate_batches

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


def build_index(model_dir: str | os.PathLike, out: str | os.PathLike, *, data: str | None = None,
                images: str | None = None, splits: tuple[str, ...] = ("train", "validation"),
                batch_size: int | None = None, chunk_size: int = 8192) -> dict:
    """Embed training shards (or an image folder) with the model; resumable. Returns a summary dict."""
    from landmark_kaggle import predict as P

    bundle = P.load_for_inference(model_dir)
    batch_size = batch_size or bundle.config.inference.batch_size
    if (data is None) == (images is None):
        raise UserError("give exactly one of --data TFREC_DIR or --images DIR")
    if data is not None:
        ids, lids = P.tfrec_ids(P.shard_files(data, splits))
        files = P.shard_files(data, splits)

        def dataset(start, stop):
            return P.tfrec_dataset(files, bundle.config.data, skip=start, take=stop - start)
    else:
        ids, paths, skipped = P.list_images(images)
        if skipped:
            print(f"embed-index: {len(skipped)} file(s) in {images} skipped: names are not 16-hex ids "
                  f"(first: {skipped[0]})")
        lids = np.full(len(ids), -1, np.int64)

        def dataset(start, stop):
            return P.image_dataset(ids[start:stop], paths[start:stop], bundle.config.data)
    if len(ids) == 0:
        raise UserError(f"nothing to embed in {data or images}")
    out = Path(out)
    sha = file_sha256(Path(model_dir) / "model.keras")
    probe = bundle.embed_fn(probe_image(bundle.config.data.image_size))[1][0]
    meta = {"backend": f"model:{Path(model_dir).resolve()}", "weights_sha256": sha,
            "image_size": bundle.config.data.image_size, "source": str(data or images)}
    writer = StoreWriter(out, ids, meta, dim=int(probe.shape[-1]), chunk_size=chunk_size, probe=probe)
    np.save(out / LANDMARK_IDS, lids)
    failed = _embed_batches(lambda x: bundle.embed_fn(x)[1], dataset, writer, ids, batch_size)
    writer.finalize()
    summary = {"rows": len(ids), "failed": failed, "dim": int(probe.shape[-1]), "landmarks": int(len(set(lids) - {-1}))}
    (out / INDEX_META).write_text(json.dumps({**meta, **summary}, indent=2) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (model.keras, config.json, label_map.csv)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="TFRecord folder: embeds its train and validation shards")
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
