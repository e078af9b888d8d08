"""The scoring rules, each on tiny arrays worked out by hand (the arithmetic is in the comments)."""


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


def published_third(cos, sims, landmarks, allowed=None):
    """The GLR2020 3rd place's last loop, restated from its submission notebook for one query: the top-5 classes
    by cos θ (classes outside ``allowed`` lowered by 1 first) form a dict; each of the top-5 neighbours adds
    s**9 * dict.get(landmark, 1e-8)**10 to its landmark; the answer is the first maximum."""
    cos = np.array(cos, np.float64)
    if allowed is not None:
        cos = np.where(allowed, cos, cos - 1.0)
    top = sorted(range(len(cos)), key=lambda j: -cos[j])[:5]
    classify = {j: cos[j] for j in top}
    tmp = {}
    for s, lid in list(zip(sims, landmarks, strict=True))[:5]:
        tmp[lid] = tmp.get(lid, 0.0) + s ** 9 * classify.get(lid, 1e-8) ** 10
    return max(tmp.items(), key=lambda x: x[1])


def test_glr2020_3rd_by_hand():
    # 7 classes; class 6 is not in the scoring run's train.csv: 0.95 - 1 = -0.05, out of the top 5.
    # Top-5 dict: 0 → 0.9, 2 → 0.5, 3 → 0.4, 4 → 0.3, 5 → 0.2; class 1 (0.1) is not in it: 1e-8.
    # Neighbours (s, label): (0.8, 1) (0.7, 2) (0.6, 2) (0.5, 0) (0.4, 7: a landmark the model has no class
    # for) and a 6th (0.99, 0) the rule does not see.
    #   1: 0.8⁹ · (1e-8)¹⁰            ≈ 1.3e-81
    #   2: (0.7⁹ + 0.6⁹) · 0.5¹⁰      = 0.0504324 · 9.765625e-4 ≈ 4.925e-5
    #   0: 0.5⁹ · 0.9¹⁰               = 0.001953125 · 0.3486784 ≈ 6.810e-4   <- best
    #   7: 0.4⁹ · (1e-8)¹⁰            ≈ 2.6e-84
    cos = np.array([[0.9, 0.1, 0.5, 0.4, 0.3, 0.2, 0.95]] * 2)
    allowed = np.array([True] * 6 + [False])
    sims = np.array([[0.8, 0.7, 0.6, 0.5, 0.4, 0.99], [0.9, 0.5, 0.3, 0.2, 0.1, 0.0]])
    labels = np.array([[1, 2, 2, 0, 7, 0], [6, 2, 1, 7, 7, 6]])
    label, score = scoring.glr2020_3rd(cos, sims, labels, allowed)
    # Query 1: class 6's neighbour is the nearest, but pushed down it counts 0.9⁹·1e-80; class 2: 0.5⁹·0.5¹⁰.
    assert label.tolist() == [0, 2]
    np.testing.assert_allclose(score, [0.5 ** 9 * 0.9 ** 10, 0.5 ** 9 * 0.5 ** 10], rtol=1e-6)
    for q in range(2):
        want = published_third(cos[q], sims[q].tolist(), labels[q].tolist(), allowed)
        assert (label[q], score[q]) == pytest.approx(want, rel=1e-6, abs=0)
    # Query 2: no neighbour's class is in the dict: 1 has (0.8⁹ + 0.7⁹)·1e-80, the unknown 7 has 0.75⁹·1e-80.
    label, score = scoring.glr2020_3rd(cos[:1], np.array([[0.8, 0.75, 0.7]]), np.array([[1, 7, 1]]), allowed)
    assert label.tolist() == [1]
    np.testing.assert_allclose(score, [(0.8 ** 9 + 0.7 ** 9) * 1e-80], rtol=1e-9)
    # Without the push-down class 6 (0.95) is in the dict and its neighbour wins query 1: 0.9⁹·0.95¹⁰.
    label, score = scoring.glr2020_3rd(cos, sims, labels)
    assert label.tolist() == [0, 6]
    np.testing.assert_allclose(score[1], 0.9 ** 9 * 0.95 ** 10, rtol=1e-6)
    assert (label[1], score[1]) == pytest.approx(published_third(cos[1], sims[1].tolist(), labels[1].tolist()),
                                                 rel=1e-6, abs=0)


def test_glr2020_3rd_uses_cosines_not_probabilities():
    # The factor is cos θ itself: 0.6 and 0.3 give (0.6/0.3)¹⁰ = 1024 between equal neighbours, whatever the
    # model's scale (a softmax over s·cos θ would make it e^(10·s·0.3)).
    cos = np.array([[0.6, 0.3, 0.0, 0.0, 0.0, 0.0]])
    label, score = scoring.glr2020_3rd(cos, np.array([[0.5, 0.5]]), np.array([[1, 0]]))
    assert label.tolist() == [0]
    np.testing.assert_allclose(score, [0.5 ** 9 * 0.6 ** 10], rtol=1e-6)


def test_glr2020_3rd_matches_the_published_loop_on_random_blocks():
    rng = np.random.default_rng(5)
    q, c = 60, 12
    cos = rng.uniform(-0.2, 1.0, (q, c)).astype(np.float32)
    allowed = rng.random(c) < 0.7
    sims = -np.sort(-rng.uniform(0.0, 1.0, (q, 6)), axis=1)
    labels = rng.integers(0, c + 3, (q, 6))  # c, c+1, c+2: landmarks the model has no class for
    label, score = scoring.glr2020_3rd(cos, sims, labels, allowed)
    for i in range(q):
        want = published_third(cos[i], sims[i].tolist(), labels[i].tolist(), allowed)
        assert (label[i], score[i]) == pytest.approx(want, rel=1e-5, abs=0)


def test_top_classes_in_chunks_with_the_push_down():
    cos = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.2, 0.8, 0.3], [0.6, 0.6, 0.1, 0.0]], np.float32)
    allowed = np.array([True, False, True, True])
    classes, values = scoring.top_classes(cos, 2, allowed, chunk=2)
    # Row 0: 0.1, 0.9 - 1 = -0.1, 0.5, 0.7 → 3, 2. Row 1: 0.4, -0.8, 0.8, 0.3 → 2, 0. Row 2: 0.6, -0.4, 0.1, 0 → 0, 2.
    assert classes.tolist() == [[3, 2], [2, 0], [0, 2]]
    np.testing.assert_allclose(values, [[0.7, 0.5], [0.8, 0.4], [0.6, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(cos[0], np.array([0.1, 0.9, 0.5, 0.7], np.float32))  # the input is untouched


def test_glr2020_1st_by_hand():
    # The search hands over the k kept rows by clamp(s, 0, 1) - B (search.DeviceIndex with a penalty).
    # Query 0: adjusted 0.7 (landmark 1), 0.6 (0), 0.6 (2), C 0.25 → 1 with 0.7 - 0.25 = 0.45.
    # Query 1: 0.4 (3), 0.3 (a non-landmark: votes nothing), 0.2 (3), C 0.1 → 3 with 0.6 - 0.1 = 0.5.
    # Query 2: one row only (-inf slots): 0.5 (4) - C 0.3 = 0.2. Query 3: only non-landmarks: no answer.
    adjusted = np.array([[0.7, 0.6, 0.6], [0.4, 0.3, 0.2], [0.5, -np.inf, -np.inf], [0.9, 0.8, 0.7]])
    labels = np.array([[1, 0, 2], [3, -1, 3], [4, 0, 0], [-1, -1, -1]])
    c = np.array([0.25, 0.1, 0.3, 0.3])
    label, score = scoring.glr2020_1st(adjusted, labels, c)
    assert label.tolist() == [1, 3, 4, -1]
    np.testing.assert_allclose(score, [0.45, 0.5, 0.2, 0.0])


def test_glr2020_1st_sums_repeats():
    # Landmark 4 twice: 0.8 + 0.7 = 1.5 against landmark 9's 0.9; minus C 0.5.
    label, score = scoring.glr2020_1st(np.array([[0.9, 0.8, 0.7]]), np.array([[9, 4, 4]]), np.array([0.5]))
    assert label.tolist() == [4]
    np.testing.assert_allclose(score, [1.0])


@pytest.mark.parametrize("rule", ["glr2020_1st", "glr2020_3rd"])
def test_ties_go_to_the_nearest_neighbour(rule):
    # Two landmarks with identical evidence: the one whose neighbour comes first wins, as the published
    # max over a dict filled in neighbour order does.
    sims, labels = np.array([[0.5, 0.5]]), np.array([[8, 3]])
    if rule == "glr2020_1st":
        label, _ = scoring.glr2020_1st(sims, labels, np.zeros(1))
    else:
        # 8 and 3 are beyond the model's 3 classes: both count 1e-8 (a class in the top 5 would count its cos θ).
        label, _ = scoring.glr2020_3rd(np.full((1, 3), 0.5), sims, labels)
    assert label.tolist() == [8]
