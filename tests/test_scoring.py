"""The scoring rules, each on tiny arrays worked out by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest

from landmark_kaggle.infer import scoring


def test_linear_by_hand():
    # k = 3, w = 0.5. Query 0: cos (0.2, 0.6, 0.1); neighbours 0.9 → class 0, 0.5 → class 0, 0.3 → class 2.
    #   class 0: 0.5·0.2 + 0.5·(0.9 + 0.5)/3 = 0.1 + 0.2333 = 0.3333   <- best
    #   class 1: 0.5·0.6                     = 0.3      (the classifier's top class)
    #   class 2: 0.5·0.1 + 0.5·0.3/3         = 0.1
    # Query 1: cos (0.7, 0.1, 0.2); neighbours 0.4 → 1, 0.3 → none (-1), 0.2 → 2.
    #   class 0: 0.35 <- best; class 1: 0.05 + 0.0667 = 0.1167; class 2: 0.1 + 0.0333 = 0.1333
    cos = np.array([[0.2, 0.6, 0.1], [0.7, 0.1, 0.2]])
    sims = np.array([[0.9, 0.5, 0.3], [0.4, 0.3, 0.2]])
    labels = np.array([[0, 0, 2], [1, -1, 2]])
    label, score = scoring.linear(cos, sims, labels, 0.5)
    assert label.tolist() == [0, 0]
    np.testing.assert_allclose(score, [0.1 + 0.5 * 1.4 / 3, 0.35])
    # w = 1: votes alone. Query 0: class 0 has 1.4/3; query 1: class 1 has 0.4/3 (class 0 has no votes: 0).
    label, score = scoring.linear(cos, sims, labels, 1.0)
    assert label.tolist() == [0, 1]
    np.testing.assert_allclose(score, [1.4 / 3, 0.4 / 3])
    # w = 0 or no index: the classifier's top class and its cos θ.
    for args in ((sims, labels, 0.0), (None, None, 0.5)):
        label, score = scoring.linear(cos, *args)
        assert label.tolist() == [1, 0]
        np.testing.assert_allclose(score, [0.6, 0.7])


def test_linear_equals_the_argmax_over_every_class():
    # The candidate shortcut against the dense definition: (1 - w)·cos + w·votes over all C classes.
    rng = np.random.default_rng(0)
    q, c, k, w = 200, 9, 4, 0.6
    cos = rng.uniform(-1, 1, (q, c))
    sims = -np.sort(-rng.uniform(-1, 1, (q, k)), axis=1)
    labels = rng.integers(-1, c, (q, k))
    dense = (1 - w) * cos
    for i in range(q):
        for j in range(k):
            if labels[i, j] >= 0:
                dense[i, labels[i, j]] += w * sims[i, j] / k
    label, score = scoring.linear(cos, sims, labels, w)
    np.testing.assert_array_equal(label, dense.argmax(axis=1))
    np.testing.assert_allclose(score, dense.max(axis=1))


def test_nonlandmark_penalty_by_hand():
    # Mean distractor similarity: (1.0 + 0.0)/2 = 0.5 and (0.6 - 0.6)/2 = 0 → λ = 2: 1.0 and 0.
    dsims = np.array([[1.0, 0.0], [0.6, -0.6]])
    np.testing.assert_allclose(scoring.nonlandmark_penalty(dsims, 2.0), [1.0, 0.0], atol=1e-12)
    # Only the part above the query's closeness to landmarks: 2·(0.5 - 0.2) and 2·(0 - (-1)).
    np.testing.assert_allclose(scoring.nonlandmark_penalty(dsims, 2.0, np.array([0.2, -1.0])), [0.6, 2.0])


def test_glr2020_1st_by_hand():
    # Query 0: sims 0.9 0.8 0.7 0.6 -0.2, labels 0 1 0 2 1, B 0.5 0.1 0.1 0 0, C 0.25.
    #   adjusted clamp(s, 0, 1) - B = 0.4 0.7 0.6 0.6 0.0; the best 3: 0.7 (1), 0.6 (0), 0.6 (2)
    #   per landmark: 1 → 0.7, 0 → 0.6, 2 → 0.6; answer 1 with 0.7 - 0.25 = 0.45.
    #   (Without B the raw top 3, 0.9 0.8 0.7, would give landmark 0 with 1.6: B changes the answer.)
    # Query 1: sims 0.5 0.45 0.4, labels 3 -1 3, B 0.1 0 0.2, C 0.1.
    #   adjusted 0.4, (a non-landmark: never kept), 0.2 → landmark 3: 0.4 + 0.2 = 0.6; 0.6 - 0.1 = 0.5.
    # Query 2: only non-landmark neighbours: no prediction.
    sims = np.array([[0.9, 0.8, 0.7, 0.6, -0.2], [0.5, 0.45, 0.4, 0.0, 0.0], [0.9, 0.8, 0.0, 0.0, 0.0]])
    labels = np.array([[0, 1, 0, 2, 1], [3, -1, 3, -1, -1], [-1, -1, -1, -1, -1]])
    b = np.array([[0.5, 0.1, 0.1, 0.0, 0.0], [0.1, 0.0, 0.2, 0.0, 0.0], [0.0] * 5])
    c = np.array([0.25, 0.1, 0.3])
    label, score = scoring.glr2020_1st(sims, labels, b, c)
    assert label.tolist() == [1, 3, -1]
    np.testing.assert_allclose(score, [0.45, 0.5, 0.0])


def test_glr2020_1st_clamps_at_one_and_sums_repeats():
    # sims 1.3 (clamped to 1) and 0.9, both landmark 4, B 0.2 each: (1 - 0.2) + (0.9 - 0.2) = 1.5; minus C 0.5.
    label, score = scoring.glr2020_1st(np.array([[1.3, 0.9]]), np.array([[4, 4]]), np.array([[0.2, 0.2]]),
                                       np.array([0.5]))
    assert label.tolist() == [4]
    np.testing.assert_allclose(score, [1.0])


def test_log_softmax_by_hand():
    # s = 2, cos (0, ln3/2, 0): logits (0, ln 3, 0), exp (1, 3, 1) → p = (0.2, 0.6, 0.2).
    cos = np.array([[0.0, math.log(3) / 2, 0.0]])
    got = scoring.log_softmax_at(cos, 2.0, np.array([[0, 1, 2, -1]]))
    np.testing.assert_allclose(got[0, :3], np.log([0.2, 0.6, 0.2]))
    assert got[0, 3] == -np.inf


def test_glr2020_3rd_by_hand():
    # p = (0.2, 0.6, 0.2) as above. Neighbours (s, landmark): (0.9, 0) (0.8, 1) (0.5, 1) (0.4, 2) (0.3, 0),
    # and a 6th (0.99, 1) that the rule does not see (top 5 only).
    #   landmark 0: 0.9⁹·0.2¹⁰ + 0.3⁹·0.2¹⁰ = 0.2¹⁰·(0.3874 + 0.0000197) ≈ 3.97e-8
    #   landmark 1: 0.6¹⁰·(0.8⁹ + 0.5⁹) = 0.0060466·0.1361709 ≈ 8.234e-4   <- best, though 0 has the nearest
    #   landmark 2: 0.4⁹·0.2¹⁰ ≈ 2.7e-11
    cos = np.array([[0.0, math.log(3) / 2, 0.0]])
    sims = np.array([[0.9, 0.8, 0.5, 0.4, 0.3, 0.99]])
    labels = np.array([[0, 1, 1, 2, 0, 1]])
    label, score = scoring.glr2020_3rd(cos, 2.0, sims, labels)
    assert label.tolist() == [1]
    np.testing.assert_allclose(score, [0.6 ** 10 * (0.8 ** 9 + 0.5 ** 9)], rtol=1e-12)


def test_glr2020_3rd_keeps_tiny_probabilities_apart():
    # 81,313 classes, all cos 0: p = 1/81313 for every class, p¹⁰ ≈ 7.9e-50 (0 in float32, not in float64).
    # Neighbours (0.9, 5) and (0.8, 7): landmark 5 wins with 0.9⁹·p¹⁰; a non-landmark (-1) scores nothing.
    cos = np.zeros((2, 81313))
    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    labels = np.array([[5, 7, -1], [-1, -1, -1]])
    label, score = scoring.glr2020_3rd(cos, 30.0, sims, labels)
    assert label.tolist() == [5, -1]
    np.testing.assert_allclose(score[0], 0.9 ** 9 * (1 / 81313) ** 10, rtol=1e-9)
    assert score[0] > 0 and score[1] == 0


@pytest.mark.parametrize("rule", ["glr2020_1st", "glr2020_3rd"])
def test_ties_go_to_the_nearest_neighbour(rule):
    # Two landmarks with identical evidence: the one whose neighbour comes first wins, as argmax would.
    sims, labels = np.array([[0.5, 0.5]]), np.array([[8, 3]])
    if rule == "glr2020_1st":
        label, _ = scoring.glr2020_1st(sims, labels, np.zeros((1, 2)), np.zeros(1))
    else:
        label, _ = scoring.glr2020_3rd(np.zeros((1, 10)), 1.0, sims, labels)
    assert label.tolist() == [8]
