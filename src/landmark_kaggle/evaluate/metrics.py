"""The competition's metric, Global Average Precision (micro-AP), and which predictions are right.

GAP, as the landmark recognition competitions define it: each test image gets
at most one prediction ``(landmark_id, confidence)``; all predictions are
ranked by confidence, descending, and

    GAP = (1/M) * sum_i P(i) * rel(i)

where M is the number of test images that show a landmark, P(i) the precision
over the first i predictions and rel(i) is 1 when prediction i names one of the
image's landmarks. A prediction on a non-landmark image is a miss in the
ranking; an image without a prediction adds nothing but still counts in M.
Equal confidences are ordered by image id ascending, then landmark id
ascending (the reference order; with one prediction per image the id decides),
so the score does not depend on the input order.

Everything here is numpy (and pandas for hashing ids); 1,000,000 predictions
score in about a second. The sum is accumulated in rank order (``cumsum``), as
a plain loop would, so a loop over the same definition gives the same float to
the last digit (``benchmarks/gap.py`` checks this). ``TOP_K`` names the
top-k accuracies the trainers report (``optim.topk_metrics``); no Keras here.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

TOP_K = (1, 10, 100, 1000)


class MetricError(ValueError):
    """The inputs cannot be scored (no landmark image, unknown or repeated ids, NaN confidence...)."""


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The right answers for a set of test images, in flat arrays.

    ``ids`` (object array of str, unique) lists every scored image;
    ``pair_image`` / ``pair_landmark`` list each (image position, landmark id)
    that is right, so an image with several landmarks has several pairs and a
    non-landmark image has none. Build it with ``GroundTruth.build``: it also
    keeps the id hash index and each id's rank in sorted order, so scoring
    many prediction sets against one solution hashes and sorts the ids once.
    """

    ids: np.ndarray
    pair_image: np.ndarray
    pair_landmark: np.ndarray
    id_rank: np.ndarray

    @functools.cached_property
    def index(self) -> pd.Index:
        """Hash index of ``ids`` (built on first use, then reused)."""
        return pd.Index(self.ids)

    @classmethod
    def build(cls, ids: Sequence[str] | np.ndarray, landmarks: Sequence[Iterable[int] | int]) -> GroundTruth:
        """``ids[i]`` shows the landmarks ``landmarks[i]`` (an int, or a collection; empty: no landmark)."""
        ids = np.asarray(ids, dtype=object)
        if len(ids) != len(landmarks):
            raise MetricError(f"{len(ids)} ids but {len(landmarks)} landmark lists")
        lists = list(landmarks)
        try:
            sizes = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        except TypeError:  # single ints or generators among the lists: normalise (the slow path)
            lists = [(x,) if isinstance(x, int | np.integer) else tuple(x) for x in lists]
            sizes = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(sizes.sum()))
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.argsort(ids.astype(str), kind="stable")] = np.arange(len(ids))
        truth = cls(ids, np.repeat(np.arange(len(ids), dtype=np.int64), sizes), flat, rank)
        dup = truth.index.duplicated()
        if dup.any():
            raise MetricError(f"image id {ids[np.flatnonzero(dup)[0]]!r} appears twice in the ground truth")
        if (flat < 0).any():
            raise MetricError("ground-truth landmark ids must be non-negative")
        return truth

    def subset(self, mask: np.ndarray) -> GroundTruth:
        """The ground truth of the images where ``mask`` (boolean, one per image) is true."""
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != self.ids.shape:
            raise MetricError(f"mask has shape {keep.shape}, the ground truth {self.ids.shape}")
        new_position = np.cumsum(keep) - 1
        kept_pairs = keep[self.pair_image]
        rank = np.empty(int(keep.sum()), dtype=np.int64)
        rank[np.argsort(self.id_rank[keep], kind="stable")] = np.arange(rank.size)
        return GroundTruth(self.ids[keep], new_position[self.pair_image[kept_pairs]],
                           self.pair_landmark[kept_pairs], rank)

    @classmethod
    def from_mapping(cls, solution: Mapping[str, Iterable[int]]) -> GroundTruth:
        """``{image id: landmark ids}``; an empty collection marks a non-landmark image."""
        return cls.build(list(solution.keys()), list(solution.values()))

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def has_landmark(self) -> np.ndarray:
        """Boolean per image: does it show at least one landmark?"""
        mask = np.zeros(len(self.ids), dtype=bool)
        mask[self.pair_image] = True
        return mask

    @property
    def num_landmark_images(self) -> int:
        return int(self.has_landmark.sum())


def _as_ground_truth(solution: GroundTruth | Mapping[str, Iterable[int]]) -> GroundTruth:
    return solution if isinstance(solution, GroundTruth) else GroundTruth.from_mapping(solution)


def _match(ids, landmark_ids, confidences, truth: GroundTruth):
    """Keep real predictions; return their (image position, landmark id, confidence, correct) and the kept mask.

    ``ids=None``: the predictions are aligned with ``truth.ids`` (entry i is for image i), so no id lookup.
    """
    aligned = ids is None
    ids = truth.ids if aligned else np.asarray(ids, dtype=object)
    raw = np.asarray(landmark_ids)
    n = len(ids)
    if raw.shape != (n,):
        raise MetricError(f"{n} ids but landmark_ids has shape {raw.shape}")
    # -1, None or NaN (a pandas column with gaps) means "no prediction for this image".
    lids = raw.astype(np.int64) if raw.dtype.kind in "iu" else np.where(pd.isna(raw), -1, raw).astype(np.int64)
    if (lids < -1).any():
        bad = int(np.flatnonzero(lids < -1)[0])
        raise MetricError(f"image {ids[bad]!r}: landmark id {lids[bad]} is negative (-1 alone means no prediction)")
    conf = np.zeros(n) if confidences is None else np.asarray(confidences, dtype=np.float64)
    if conf.shape != (n,):
        raise MetricError(f"{n} ids but confidences has shape {conf.shape}")
    keep = lids >= 0
    ids, lids, conf = ids[keep], lids[keep], conf[keep]
    if not np.isfinite(conf).all():
        bad = int(np.flatnonzero(~np.isfinite(conf))[0])
        raise MetricError(f"image {ids[bad]!r}: confidence {conf[bad]!r} is not a finite number")
    if aligned:
        pos = np.flatnonzero(keep)
    else:
        pos = truth.index.get_indexer(ids)
        if (pos < 0).any():
            raise MetricError(f"image {ids[np.flatnonzero(pos < 0)[0]]!r} is not in the ground truth")
        repeated = np.bincount(pos, minlength=len(truth.ids)) > 1
        if repeated.any():
            raise MetricError(f"image {truth.ids[np.flatnonzero(repeated)[0]]!r} has more than one prediction")
    # Most images have one landmark or none: compare with it directly. The few with several go through
    # isin on one int64 key per (image, landmark) pair (1e6 images x 2e5 landmarks is far below 2**63).
    per_image = np.bincount(truth.pair_image, minlength=len(truth.ids))
    some_landmark = np.full(len(truth.ids), -1, dtype=np.int64)
    some_landmark[truth.pair_image] = truth.pair_landmark
    correct = some_landmark[pos] == lids
    several = np.flatnonzero(per_image[pos] > 1)
    if several.size:
        width = int(max(lids.max(initial=0), truth.pair_landmark.max(initial=0))) + 1
        multi = per_image[truth.pair_image] > 1
        correct[several] = np.isin(pos[several] * width + lids[several],
                                   truth.pair_image[multi] * width + truth.pair_landmark[multi])
    return pos, lids, conf, correct, keep


def global_average_precision(ids, landmark_ids, confidences, solution: GroundTruth | Mapping[str, Iterable[int]],
                             *, ignore_nonlandmark: bool = False) -> float:
    """Global Average Precision of one prediction per image.

    ``ids``, ``landmark_ids``, ``confidences``: parallel sequences, at most one
    entry per image; a landmark id of -1 (or None/NaN) means "no prediction".
    ``ids=None`` says the other two are aligned with the solution's images
    (entry i is for ``GroundTruth.ids[i]``), which skips the id lookup.
    ``solution``: a ``GroundTruth`` or ``{image id: landmark ids}`` covering
    every predicted image (an empty collection marks a non-landmark image).
    ``ignore_nonlandmark=True`` drops predictions on non-landmark images from
    the ranking instead of counting them as misses (the competition does not).
    Raises ``MetricError`` when the solution has no landmark image (M = 0).
    """
    truth = _as_ground_truth(solution)
    m = truth.num_landmark_images
    if m == 0:
        raise MetricError("the solution has no landmark image, so GAP is undefined (M = 0)")
    pos, lids, conf, correct, _ = _match(ids, landmark_ids, confidences, truth)
    if ignore_nonlandmark:
        on_landmark = truth.has_landmark[pos]
        pos, lids, conf, correct = pos[on_landmark], lids[on_landmark], conf[on_landmark], correct[on_landmark]
    if not correct.any():
        return 0.0
    # Tie order: confidence descending, then image id ascending (then landmark id, which never decides:
    # an image has one prediction at most). Put predictions in id order by scattering their id ranks
    # (no sort), then a stable sort on confidence alone keeps that order within ties.
    slot = np.full(len(truth.ids), -1, dtype=np.int64)
    slot[truth.id_rank[pos]] = np.arange(pos.size)
    by_id = slot[slot >= 0]
    order = by_id[np.argsort(-conf[by_id], kind="stable")]
    hits = correct[order]
    ranks = np.flatnonzero(hits) + 1
    precisions = np.arange(1, ranks.size + 1, dtype=np.float64) / ranks
    return float(np.cumsum(precisions)[-1] / m)


def correct_predictions(ids, landmark_ids, solution: GroundTruth | Mapping[str, Iterable[int]]) -> np.ndarray:
    """Boolean per entry: does the prediction name one of the image's landmarks? (no prediction: False)."""
    _, _, _, correct, keep = _match(ids, landmark_ids, None, _as_ground_truth(solution))
    out = np.zeros(keep.shape, dtype=bool)
    out[keep] = correct
    return out
