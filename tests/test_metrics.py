"""GAP, correctness and the trainer's top-k metrics against values worked out by hand, and GAP against a plain loop."""

import warnings

import numpy as np
import pytest
from helpers import hid, loop_gap

from landmark_kaggle.evaluate.metrics import (
    GroundTruth,
    MetricError,
    correct_predictions,
    global_average_precision,
)

A, B, C, D, E = (hid(x) for x in ("a", "b", "c", "d", "e"))
# D shows no landmark; E shows landmark 5 but gets no prediction.
SOLUTION = {A: [1], B: [2], C: [3], D: [], E: [5]}


def test_gap_hand_computed_with_nonlandmark_miss_and_missing_prediction():
    # Ranking: A right (P=1), D on a non-landmark image (miss), B right (P=2/3), C wrong.
    # M = 4 (A, B, C, E): E has no prediction but counts; D shows no landmark.
    ids, lids, confs = [A, D, B, C], [1, 7, 2, 9], [0.9, 0.8, 0.7, 0.6]
    assert global_average_precision(ids, lids, confs, SOLUTION) == pytest.approx((1 + 2 / 3) / 4, abs=1e-15)
    # Without D in the ranking B moves up to rank 2: (1 + 2/2) / 4.
    assert global_average_precision(ids, lids, confs, SOLUTION, ignore_nonlandmark=True) == 0.5
    assert correct_predictions(ids, lids, SOLUTION).tolist() == [True, False, True, False]


def test_nonlandmark_image_without_prediction_adds_nothing():
    assert global_average_precision([A], [1], [0.3], {A: [1], D: []}) == 1.0
    # The same image predicted costs a rank: D first (miss), A second -> (1/2) / 1.
    assert global_average_precision([A, D], [1, 4], [0.3, 0.4], {A: [1], D: []}) == 0.5


def test_missing_predictions_count_in_m():
    assert global_average_precision([A], [1], [0.9], {A: [1], B: [2]}) == 0.5
    # -1, None and NaN all mean "no prediction".
    assert global_average_precision([A, B], [1, -1], [0.9, 0.0], {A: [1], B: [2]}) == 0.5
    assert global_average_precision([A, B], [1, None], [0.9, None], {A: [1], B: [2]}) == 0.5
    assert global_average_precision([A, B], np.array([1.0, np.nan]), [0.9, np.nan], {A: [1], B: [2]}) == 0.5


def test_ties_are_ordered_by_image_id():
    truth = {A: [1], B: [2]}
    # Equal confidence: A ranks first. A wrong, B right -> P(2) = 1/2, GAP = 0.25.
    assert global_average_precision([B, A], [2, 9], [0.5, 0.5], truth) == 0.25
    # A right, B wrong -> P(1) = 1, GAP = 0.5; input order does not matter.
    assert global_average_precision([B, A], [9, 1], [0.5, 0.5], truth) == 0.5
    assert global_average_precision([A, B], [1, 9], [0.5, 0.5], truth) == 0.5


def test_image_with_several_landmarks_any_is_right():
    truth = {A: [3, 4], B: [7]}
    assert global_average_precision([A, B], [4, 7], [0.9, 0.8], truth) == 1.0
    assert global_average_precision([A, B], [3, 8], [0.9, 0.8], truth) == 0.5
    assert correct_predictions([A, B], [4, 8], truth).tolist() == [True, False]


def test_solution_without_landmark_images_is_a_clear_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero RuntimeWarning either
        with pytest.raises(MetricError, match="no landmark image"):
            global_average_precision([A], [1], [0.9], {A: [], B: []})


@pytest.mark.parametrize("ids, lids, confs, message", [
    ([hid("f")], [1], [0.5], "not in the ground truth"),
    ([A, A], [1, 2], [0.5, 0.4], "more than one prediction"),
    ([A], [1], [float("nan")], "not a finite number"),
    ([A], [1], [float("inf")], "not a finite number"),
    ([A], [-3], [0.5], "negative"),
])
def test_bad_predictions_are_rejected(ids, lids, confs, message):
    with pytest.raises(MetricError, match=message):
        global_average_precision(ids, lids, confs, SOLUTION)


def test_vectorised_gap_equals_the_loop_to_the_last_digit():
    rng = np.random.default_rng(3)
    n = 3000
    ids = [f"{x:016x}" for x in rng.choice(2**40, size=n, replace=False)]
    # Images with no landmark, one, or two (about a third each), 20 landmarks: many hits, many ties.
    truth = {i: [int(x) for x in rng.choice(20, size=rng.integers(3), replace=False)] for i in ids}
    has = rng.random(n) < 0.8
    lids = np.where(has, rng.integers(20, size=n), -1)
    confs = np.round(rng.random(n), 2)  # plenty of ties
    kept = [(i, int(lid), float(c)) for i, lid, c in zip(ids, lids, confs, strict=True) if lid >= 0]
    for ignore in (False, True):
        ours = global_average_precision(ids, lids, confs, truth, ignore_nonlandmark=ignore)
        assert ours == loop_gap(*zip(*kept, strict=True), truth, ignore_nonlandmark=ignore)
    shuffled = rng.permutation(n)
    assert global_average_precision([ids[k] for k in shuffled], lids[shuffled], confs[shuffled], truth) == \
        global_average_precision(ids, lids, confs, truth)


def test_aligned_predictions_need_no_ids():
    truth = GroundTruth.from_mapping(SOLUTION)  # order A, B, C, D, E
    lids, confs = [1, 2, 9, 7, -1], [0.9, 0.7, 0.6, 0.8, 0.0]
    assert global_average_precision(None, lids, confs, truth) == pytest.approx((1 + 2 / 3) / 4, abs=1e-15)
    assert correct_predictions(None, lids, truth).tolist() == [True, True, False, False, False]
    assert correct_predictions(None, lids, truth).sum() == 2
    with pytest.raises(MetricError, match="5 ids but landmark_ids has shape"):
        global_average_precision(None, lids[:3], confs[:3], truth)


def test_ground_truth_subset_keeps_pairs_and_order():
    truth = GroundTruth.from_mapping({C: [3], A: [1, 9], D: [], B: [2]})
    part = truth.subset(np.array([True, True, True, False]))
    assert part.ids.tolist() == [C, A, D]
    pairs = zip(part.ids[part.pair_image].tolist(), part.pair_landmark.tolist(), strict=True)
    assert sorted(pairs) == [(A, 1), (A, 9), (C, 3)]
    assert part.num_landmark_images == 2
    assert part.id_rank.tolist() == [1, 0, 2]  # A < C < D
    with pytest.raises(MetricError, match="twice"):
        GroundTruth.build([A, A], [[1], [2]])


# Row 0: label 2 scores 0.4, one class higher. Row 1: label 0 ties 0.3 with class 1, none higher.
# Row 2: label 1 ties 0.05 with class 2, one higher. Row 3 is a non-landmark (-1): left out.
SCORES = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.2], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]], np.float32)
LABELS = np.array([2, 0, 1, -1])


def test_trainer_top_k_metrics_hand_computed():
    from landmark_kaggle.train.optim import topk_metrics

    # k above the class count is capped (always right), so history columns are the same for every dataset.
    metrics = topk_metrics(3)
    assert [m.name for m in metrics] == ["top1", "top10", "top100", "top1000"]
    # Row 0 is right from k=2; row 1's tie counts in (as keras.ops.in_top_k does); row 2 from k=2.
    for metric, expected in zip(metrics, (1 / 3, 1.0, 1.0, 1.0), strict=True):
        metric.update_state(LABELS[:3], SCORES[:3])
        assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
