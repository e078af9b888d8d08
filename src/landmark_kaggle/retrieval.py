"""Retrieval re-ranking: find each test image's nearest indexed training images, and vote.

An index is an embeddings store written by ``embed-index`` (``embed_index.py``)
plus ``landmark_ids.npy``; ``RetrievalIndex`` loads one for search (rows with
landmark id -1 are non-landmark distractors).

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

import os
from pathlib import Path

import numpy as np

from landmark_kaggle.embstore import check_probe, open_store
from landmark_kaggle.errors import UserError

LANDMARK_IDS = "landmark_ids.npy"
INDEX_META = "index.json"


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
