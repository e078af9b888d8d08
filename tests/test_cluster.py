"""Blocked DBSCAN against scikit-learn's on data with border points reachable from two clusters.

The contract (``tfrec_builder/cluster.py``'s docstring): core points and
noise agree exactly, cluster numbers included; a border point may take any
cluster it is reachable from. The oracle here is the definition itself, from
a float64 distance matrix, not either implementation.
"""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import DBSCAN

from tfrec_builder import cluster


def _by_definition(x, eps, min_samples, metric, core_labels):
    """Core mask, noise mask and, per point, the set of clusters (from ``core_labels``) within eps of it."""
    d = cdist(x.astype(np.float64), x.astype(np.float64), metric=metric)
    near = d <= eps
    core = near.sum(axis=1) >= min_samples
    reach = [set(core_labels[np.flatnonzero(near[i] & core)].tolist()) for i in range(len(x))]
    noise = np.array([not core[i] and not reach[i] for i in range(len(x))])
    return core, noise, reach, d


def _check_contract(x, eps, min_samples, metric, blocked, ref):
    core, noise, reach, d = _by_definition(x, eps, min_samples, metric, ref)
    # The float32 distances of the blocked path must not sit on eps, or either side would be right.
    assert np.abs(d - eps).min() > 1e-3 * eps
    np.testing.assert_array_equal(blocked[core], ref[core])
    assert np.all(blocked[noise] == -1) and np.all(ref[noise] == -1)
    border = np.flatnonzero(~core & ~noise)
    for i in border:
        assert blocked[i] in reach[i] and ref[i] in reach[i], i
    ambiguous = [i for i in border if len(reach[i]) > 1]
    return border, ambiguous


SPACING, EPS, ANGLE = 0.3, 1.05, 0.05  # along a chain; DBSCAN's eps; radians per unit for the cosine data


def _chains(rng, metric):
    """Five chains of points 0.3 apart on one line, for eps 1.05 and min_samples 5 (self included).

    Interior chain points have six neighbours: core. After chains 0 and 2, 1.7 before the next chain, sits a
    bridge point 0.85 from both ends: with itself it has 3 neighbours, so it is a border point that two
    clusters reach (2 in all), and both ends (3 chain neighbours + the bridge) are core. After chains 1 and 3
    the point is one-sided (0.5 from one end, 1.2 from the next chain); it, the next chain's first point
    (4 with itself), the first chain's first and the last chain's last point are border points of one
    cluster (6 in all). Four isolated points 3 apart follow: noise. Off the line every point gets a small
    jitter. For ``cosine`` the line is an arc: position t becomes the angle ``ANGLE * t`` on a circle, and
    eps the cosine distance of the angle ``ANGLE * EPS``.
    """
    t, start = [], 0.0
    for k in range(5):
        n = int(rng.integers(12, 25))
        t += [start + SPACING * j for j in range(n)]
        end = t[-1]
        t.append(end + (0.85 if k % 2 == 0 else 0.5))  # a bridge after chains 0, 2, 4; one-sided after 1, 3
        start = end + 1.7
    t = t[:-1] + [start + 3.0 * j for j in range(1, 5)]  # after the last chain: four noise points
    t = np.array(t)
    jitter = 0.01 * rng.normal(size=(len(t), 6))
    if metric == "euclidean":
        x, eps = np.column_stack([t, np.zeros_like(t), jitter]), EPS
    else:
        x = np.column_stack([np.cos(ANGLE * t), np.sin(ANGLE * t), ANGLE * jitter])
        eps = 1.0 - np.cos(ANGLE * EPS)
    return x[rng.permutation(len(x))], eps


def test_a_border_point_reachable_from_two_clusters_may_join_either():
    # One line: cluster B (listed first, so scikit-learn expands it first), the border point p, cluster A.
    # p is within eps of a4 (0.8) and of b1 (0.9); with itself it has 3 neighbours < min_samples = 4.
    b = [(2.6, 0), (2.9, 0), (3.2, 0), (3.5, 0)]
    a = [(0.0, 0), (0.3, 0), (0.6, 0), (0.9, 0)]
    p = [(1.7, 0)]
    lonely = [(9.0, 0)]
    x = np.array(b + a + p + lonely, dtype=np.float32)
    ref = DBSCAN(eps=1.0, min_samples=4).fit(x).labels_
    # sklearn_max below the row count forces the blocked path; at the row count it is scikit-learn itself.
    blocked = cluster.dbscan_labels(x, 1.0, 4, "euclidean", sklearn_max=len(x) - 1)
    same = cluster.dbscan_labels(x, 1.0, 4, "euclidean", sklearn_max=len(x))
    np.testing.assert_array_equal(same, ref)
    assert ref.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, -1]  # B reached p first
    assert blocked.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, -1]  # p joins its nearest core point, a4
    border, ambiguous = _check_contract(x, 1.0, 4, "euclidean", blocked, ref)
    assert border.tolist() == ambiguous == [8]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_blocked_path_keeps_the_contract_on_bridged_chains(metric):
    raw, eps = _chains(np.random.default_rng(4), metric)
    x = cluster.prepare(raw, metric)
    ref = DBSCAN(eps=eps, min_samples=5, metric=metric, algorithm="brute").fit(x).labels_
    blocked = cluster.dbscan_labels(x, eps, 5, metric, sklearn_max=50)  # ~100 rows: the blocked path
    border, ambiguous = _check_contract(x, eps, 5, metric, blocked, ref)
    # The case is not trivial: five clusters, noise, one-sided border points and ones that two clusters reach.
    assert len(set(ref[ref >= 0])) == 5 and (ref == -1).sum() == 4
    assert len(ambiguous) == 2 and len(border) == 8
    assert not np.array_equal(blocked, ref)  # scikit-learn and the blocked path do take different choices
    # Small blocks (many block boundaries) give the same labels as one block.
    np.testing.assert_array_equal(cluster.blocked_dbscan(x, eps, 5, metric, block=17), blocked)


def test_without_border_points_the_labels_are_identical():
    # min_samples <= 2 (the poster's 2): every point with a neighbour is core, so nothing is left to choose.
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32))
    x = np.vstack([c + 0.3 * rng.normal(size=(120, 32)) for c in centers] + [3 * rng.normal(size=(25, 32))])
    xp = cluster.prepare(x, "cosine")
    for min_samples in (1, 2):
        ref = DBSCAN(eps=0.33, min_samples=min_samples, metric="cosine", algorithm="brute").fit(xp).labels_
        np.testing.assert_array_equal(cluster.blocked_dbscan(xp, 0.33, min_samples, "cosine", block=50), ref)
    ref = DBSCAN(eps=2.5, min_samples=2).fit(x).labels_
    got = cluster.blocked_dbscan(cluster.prepare(x, "euclidean"), 2.5, 2, "euclidean", block=37)
    np.testing.assert_array_equal(got, ref)
    assert len(set(ref)) > 2  # the case is not trivial: several clusters and noise
