"""The scoring rules that turn a test image's classifier cosines and nearest neighbours into one answer.

Pure numpy, no model and no search: each rule takes arrays for a block of Q
queries and returns, per query, the model label it predicts (-1: no
prediction) and the confidence the submission ranks by.

Inputs shared by the rules: ``cos`` float ``[Q, C]``, the (ensemble-averaged)
classifier cos θ per class; ``sims`` ``[Q, k]``, the cosine similarities of the
k nearest index rows, best first; ``labels`` ``[Q, k]``, the model label of
each of those rows (-1: a row that votes for nothing, e.g. a non-landmark).

- ``linear`` (ours): each landmark scores (1 - w)·cos θ + w·(1/k)·Σ s_i over
  the neighbours that carry it; the answer is the best landmark.
  ``nonlandmark_penalty`` then lowers the confidence by λ·max(0, d - r).
- ``glr2020_1st`` (GLR2020 1st place, Henkel & Singer): each neighbour counts
  clamp(s_i, 0, 1) - B_i, where B_i is that index row's mean top-5 similarity to
  a set of non-landmark images; the 3 best adjusted neighbours are summed per
  landmark; the best landmark's sum minus C, the query's mean top-10
  similarity to the non-landmarks, is the confidence. The classifier is not used.
- ``glr2020_3rd`` (GLR2020 3rd place): each landmark scores Σ s_i⁹ · p¹⁰
  over those of the top-5 neighbours that carry it, where p is the
  classifier's probability of that landmark for the query: the softmax of its
  logits s·cos θ over every class (s: the model's ArcFace scale).
"""

from __future__ import annotations

import numpy as np

RULES = ("linear", "glr2020_1st", "glr2020_3rd")
# GLR2020 1st place: B over each index row's top-5 non-landmarks, C over the query's top-10, 3 neighbours kept.
FIRST_B_TOP = 5
FIRST_C_TOP = 10
FIRST_KEEP = 3
# GLR2020 3rd place: the top-5 neighbours, similarity to the 9th power, probability to the 10th.
THIRD_NEIGHBOURS = 5
THIRD_SIM_POWER = 9
THIRD_PROB_POWER = 10


def _same_label_sums(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[Q, k]: for each slot j, the sum of ``values`` over the slots i of its row with labels[i] == labels[j] >= 0."""
    valid = labels >= 0
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :] & valid[:, :, None]
    return (same * np.where(valid, values, 0)[:, None, :]).sum(axis=2)


def _best_slot(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row the label and score of the best valid slot (the first on ties); label -1, score 0 with none."""
    scores = np.where(labels >= 0, scores, -np.inf)
    j = scores.argmax(axis=1)
    rows = np.arange(len(scores))
    best, label = scores[rows, j], labels[rows, j]
    ok = np.isfinite(best)
    return np.where(ok, label, -1).astype(np.int64), np.where(ok, best, 0.0)


def classifier(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classifier alone: the top class and its cos θ."""
    top = cos.argmax(axis=1)
    return top.astype(np.int64), cos[np.arange(len(top)), top].astype(np.float64)


def _best_without(cos: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, the class of highest cos θ among those no neighbour carries.

    The neighbours' classes are set to -inf in place for one argmax and then
    restored, so a [Q, C] block (1 GiB at 81,313 classes) is never copied.
    """
    if not cos.flags.writeable:
        cos = cos.copy()
    rows = np.broadcast_to(np.arange(len(cos))[:, None], labels.shape)[labels >= 0]
    cols = labels[labels >= 0]
    saved = cos[rows, cols].copy()
    try:
        cos[rows, cols] = -np.inf
        return cos.argmax(axis=1)
    finally:
        cos[rows, cols] = saved


def linear(cos: np.ndarray, sims: np.ndarray | None, labels: np.ndarray | None,
           weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(1 - w)·cos θ + w·(1/k)·Σ s_i per landmark, the best over every class.

    Only k + 1 classes can win: those the neighbours carry, and the best of
    the rest, which all score (1 - w)·cos θ; so only they are scored.
    """
    if sims is None or weight == 0 or sims.shape[1] == 0:
        return classifier(cos)
    sims = np.asarray(sims, np.float64)
    labels = np.asarray(labels, np.int64)
    q, k = sims.shape
    cand = np.concatenate([_best_without(cos, labels)[:, None], labels], axis=1)
    valid = labels >= 0
    # Votes of every candidate: Σ s_i / k over the neighbours that carry its label.
    same = (cand[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    votes = (same * sims[:, None, :]).sum(axis=2) / k
    cand_cos = np.take_along_axis(cos, np.maximum(cand, 0), axis=1).astype(np.float64)
    return _best_slot((1.0 - weight) * cand_cos + weight * votes, cand)


def nonlandmark_penalty(distractor_sims: np.ndarray, weight: float,
                        reference: np.ndarray | float = 0.0) -> np.ndarray:
    """λ·max(0, d - r): d the mean similarity to the nearest non-landmarks, r how close the query is to landmarks.

    Only the part of d above r counts, so a model whose embeddings are all
    alike does not scramble the ranking with a uniform penalty.
    """
    d = np.asarray(distractor_sims, np.float64).mean(axis=1)
    return weight * np.maximum(d - reference, 0.0)


def glr2020_1st(sims: np.ndarray, labels: np.ndarray, b: np.ndarray, c: np.ndarray,
                keep: int = FIRST_KEEP) -> tuple[np.ndarray, np.ndarray]:
    """GLR2020 1st place: Σ over the ``keep`` best (clamp(s, 0, 1) - B) per landmark, minus C.

    ``b`` ``[Q, k]`` is each neighbour row's B, ``c`` ``[Q]`` each query's C.
    Neighbours are re-ranked by their adjusted similarity before the ``keep``
    best are taken; a neighbour with label -1 is never kept.
    """
    sims = np.asarray(sims, np.float64)
    labels = np.asarray(labels, np.int64)
    adj = np.where(labels >= 0, np.clip(sims, 0.0, 1.0) - np.asarray(b, np.float64), -np.inf)
    order = np.argsort(-adj, axis=1, kind="stable")[:, :keep]
    adj = np.take_along_axis(adj, order, axis=1)
    kept = np.where(np.isfinite(adj), np.take_along_axis(labels, order, axis=1), -1)
    label, total = _best_slot(_same_label_sums(adj, kept), kept)
    return label, np.where(label >= 0, total - np.asarray(c, np.float64), 0.0)


def log_softmax_at(cos: np.ndarray, scale: float, labels: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """log p(label) under softmax(scale · cos θ) over every class, for each ``labels[q, j]`` (-inf for -1).

    The log-sum-exp runs over row chunks in the input's precision (its terms are at most 1 after subtracting
    the peak), so a [Q, C] block is never widened or copied whole; the result is float64.
    """
    lse = np.empty(len(cos), np.float64)
    for a in range(0, len(cos), chunk):
        logits = scale * cos[a:a + chunk]
        peak = logits.max(axis=1, keepdims=True)
        lse[a:a + chunk] = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1, dtype=np.float64))
    at = scale * np.take_along_axis(cos, np.maximum(labels, 0), axis=1).astype(np.float64) - lse[:, None]
    return np.where(labels >= 0, at, -np.inf)


def glr2020_3rd(cos: np.ndarray, scale: float, sims: np.ndarray, labels: np.ndarray,
                neighbours: int = THIRD_NEIGHBOURS, sim_power: int = THIRD_SIM_POWER,
                prob_power: int = THIRD_PROB_POWER) -> tuple[np.ndarray, np.ndarray]:
    """GLR2020 3rd place: Σ over the top ``neighbours`` carrying a landmark of s⁹ · p(landmark)¹⁰.

    In float64: p¹⁰ of a probability near 1/81,313 is about 1e-49, below float32's range.
    """
    sims = np.asarray(sims, np.float64)[:, :neighbours]
    labels = np.asarray(labels, np.int64)[:, :neighbours]
    contrib = sims ** sim_power * np.exp(prob_power * log_softmax_at(cos, scale, labels))
    return _best_slot(_same_label_sums(contrib, labels), labels)
