"""The scoring rules that turn a test image's classifier cosines and nearest neighbours into one answer.

Pure numpy, no model and no search: each rule takes arrays for a block of Q
queries and returns, per query, the model label it predicts (-1: no
prediction) and the confidence the submission ranks by.

Inputs shared by the rules: ``cos`` float ``[Q, C]``, the (ensemble-averaged)
classifier cos θ per class; ``sims`` ``[Q, k]``, the cosine similarities of the
k nearest index rows, best first; ``labels`` ``[Q, k]``, the label of each of
those rows: a model class 0..C-1, a landmark the model has no class for (>= C,
``retrieval.Retrieval`` numbers them; only the rules that can score one see
them), or -1, a row that votes for nothing (a non-landmark).

- ``linear`` (ours): each landmark scores (1 - w)·cos θ + w·(1/k)·Σ s_i over
  the neighbours that carry it; the answer is the best landmark.
  ``nonlandmark_penalty`` then lowers the confidence by λ·max(0, d - r).
- ``glr2020_1st`` (GLR2020 1st place, Henkel & Singer; ``notebooks/blend_ranking.ipynb`` of
  github.com/psinger/kaggle-landmark-recognition-2020-1st-place): every index row's similarity is
  clamp(s, 0, 1) - B, B being that row's mean top-5 similarity to a set of non-landmark images, and the k
  (3) best rows by that adjusted similarity are kept; B is subtracted inside the device search, before the
  top-k (``search.DeviceIndex`` with ``penalty``), which is how a distinctive row climbs past a generic one.
  The kept rows' adjusted similarities are summed per landmark; the best landmark's sum minus C, the
  query's mean top-10 similarity to the non-landmarks, is the confidence. The classifier is not used.
- ``glr2020_3rd`` (GLR2020 3rd place; ``landmark-recognition-2020-third-place-submission.ipynb`` of
  github.com/haqishen/Google-Landmark-Recognition-2020-3rd-Place-Solution): the classifier's 5 best
  classes with their cos θ (the ensemble's mean sub-center cosine: no scale, no softmax), classes outside
  the scoring run's ``train.csv`` pushed down by 1 first, form a dictionary; each landmark scores
  Σ s⁹ · d(landmark)¹⁰ over those of the top-5 neighbours that carry it, where d is its cos θ in the
  dictionary and 1e-8 for any class not in it (a landmark the model has no class for included).

Deliberate deviations from the published code (each is a property of this package, not an oversight):
the 1st place searched each model's 512-d embedding on its own (3 rows per model, summed over the 5
models) after a QuantileTransformer fitted on their validation embeddings; here one search over the
ensemble's concatenated unit embeddings keeps k rows, and there is no quantile transform (it has to be
fitted on held-out embeddings the scoring run does not have). With one model and no transform the rule
is the published one. The 3rd place's gallery similarities carry a constant factor (its gallery vectors
were not re-normalised after concatenating 9 unit vectors: 3·cos), which scales every score by 3⁹ and
changes no ranking; here s is the plain cosine. Its powers ran in float32; here in float64, so factors
below float32's range (1e-8¹⁰ = 1e-80) stay ordered.
"""

from __future__ import annotations

import numpy as np

RULES = ("linear", "glr2020_1st", "glr2020_3rd")
# GLR2020 1st place: B over each index row's top-5 non-landmarks, C over the query's top-10, 3 neighbours kept.
FIRST_B_TOP = 5
FIRST_C_TOP = 10
FIRST_KEEP = 3
# GLR2020 3rd place: the top-5 neighbours and the top-5 classes, similarity to the 9th power, cos θ to the 10th,
# 1e-8 for a class outside the top 5; classes outside the scoring run's train.csv lowered by 1 before the top 5.
THIRD_NEIGHBOURS = 5
THIRD_CLASSES = 5
THIRD_SIM_POWER = 9
THIRD_COS_POWER = 10
THIRD_DEFAULT = 1e-8
THIRD_PUSH_DOWN = 1.0
# Rows of cos θ handled at once when taking the top classes: a [512, 81,313] float32 copy is 166 MB.
CHUNK_ROWS = 512


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


def glr2020_1st(adjusted: np.ndarray, labels: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GLR2020 1st place: Σ per landmark of the kept rows' clamp(s, 0, 1) - B, the best landmark's sum minus C.

    ``adjusted`` ``[Q, k]``: the k rows the search kept by clamp(s, 0, 1) - B and those values (B is
    subtracted before the top-k: ``search.DeviceIndex(rows, penalty=B)``); a -inf slot (fewer rows than k)
    and a -1 label vote for nothing. ``c`` ``[Q]``: each query's C.
    """
    adjusted = np.asarray(adjusted, np.float64)
    labels = np.where(np.isfinite(adjusted), np.asarray(labels, np.int64), -1)
    label, total = _best_slot(_same_label_sums(adjusted, labels), labels)
    return label, np.where(label >= 0, total - np.asarray(c, np.float64), 0.0)


def top_classes(cos: np.ndarray, top: int, allowed: np.ndarray | None = None,
                push_down: float = THIRD_PUSH_DOWN, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``top`` classes by cos θ, with classes outside ``allowed`` (bool ``[C]``) lowered by
    ``push_down`` first: (classes int64 ``[Q, top]``, their lowered cos θ float64), best first.

    ``cos`` is left as it is: each chunk of rows is lowered in a copy (the caller's [Q, C] block can be 1 GiB).
    """
    q, n = cos.shape
    top = min(int(top), n)
    classes = np.empty((q, top), np.int64)
    values = np.empty((q, top), np.float64)
    for a in range(0, q, chunk):
        block = np.array(cos[a:a + chunk], np.float32)
        if allowed is not None:
            block[:, ~allowed] -= np.float32(push_down)
        if top < n:
            part = np.argpartition(-block, top - 1, axis=1)[:, :top]
        else:
            part = np.tile(np.arange(n), (len(block), 1))
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        classes[a:a + chunk] = np.take_along_axis(part, order, axis=1)
        values[a:a + chunk] = np.take_along_axis(vals, order, axis=1)
    return classes, values


def glr2020_3rd(cos: np.ndarray, sims: np.ndarray, labels: np.ndarray, allowed: np.ndarray | None = None, *,
                neighbours: int = THIRD_NEIGHBOURS, classes: int = THIRD_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """GLR2020 3rd place: Σ s⁹ · d(landmark)¹⁰ per landmark over the top ``neighbours`` rows that carry it.

    d is the landmark's cos θ when it is among the query's ``classes`` best classes (classes outside
    ``allowed``, the scoring run's train.csv, lowered by 1 first), else 1e-8. Powers in float64: 1e-8¹⁰ is
    below float32's range.
    """
    sims = np.asarray(sims, np.float64)[:, :neighbours]
    labels = np.asarray(labels, np.int64)[:, :neighbours]
    top, vals = top_classes(cos, classes, allowed)
    hit = labels[:, :, None] == top[:, None, :]
    d = np.where(hit.any(axis=2), np.where(hit, vals[:, None, :], 0.0).sum(axis=2), THIRD_DEFAULT)
    contrib = sims ** THIRD_SIM_POWER * d ** THIRD_COS_POWER
    return _best_slot(_same_label_sums(contrib, labels), labels)
