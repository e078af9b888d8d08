"""Per-class DBSCAN with bounded memory, the k-distance eps, and the keep-the-main-cluster rule.

Small classes go to scikit-learn's ``DBSCAN`` as the poster ran it. For a
large class scikit-learn materialises every point's eps-neighbourhood; in a
landmark class most images sit inside one tight cluster, so that is close to
n x n indices (10,000 images: ~100M entries, ~0.8 GB, plus the distance chunk).
``blocked_dbscan`` computes the same clustering by streaming blocks of rows:
pass 1 counts neighbours (core points), pass 2 merges core points that are
within eps into components, keeping only a spanning forest between blocks,
pass 3 attaches each border point to its nearest core point. Peak memory is
one ``block x n`` distance block (4M entries) and its edges, plus O(n).
``dbscan_labels`` picks the blocked path above ``sklearn_max`` images.

The contract with scikit-learn's ``DBSCAN`` (same eps, min_samples, metric),
which ``tests/test_cluster.py`` checks on data built to hit every case:

* the core points are the same, split into the same clusters, numbered alike
  (in the order of each cluster's first core point);
* the noise points (no core point within eps) are the same;
* a border point (not core, within eps of a core point) gets a cluster it is
  reachable from: scikit-learn gives it to whichever cluster's expansion
  reached it first, we give it to its nearest core point's cluster. Both are
  DBSCAN (Ester et al. 1996 leave the choice open), so where a border point is
  reachable from two clusters the labels may differ there, and only there.

With the poster's ``min_samples=2`` every point that has a neighbour is core,
so there are no border points and the labels are identical. (As everywhere, a
distance within float32 rounding of eps may fall either side.)

For ``metric="cosine"`` rows are L2-normalised and the cosine distance
``1 - a.b`` is computed from one matrix product per block.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

METRICS = ("cosine", "euclidean")
# Above this many images a class is clustered block by block (see module docstring).
SKLEARN_MAX = 2500
# Entries in one distance block: 4M = 16 MB of float32; building the block's sparse graph
# costs up to ~24 bytes per edge more, so a block peaks near 100 MB whatever the class size.
BLOCK_ENTRIES = 4 * 1024 * 1024
# Auto eps stays within this factor of the fixed eps, and small classes keep the fixed eps:
# a k-distance curve over a handful of points has no meaningful knee.
AUTO_EPS_RANGE = (0.5, 2.0)
AUTO_EPS_MIN_CLASS = 8


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """float32 copy; unit rows for cosine so that distances come from dot products."""
    x = np.asarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _block_rows(n: int) -> int:
    return int(max(64, min(n, BLOCK_ENTRIES // max(n, 1))))


def _distances(a: np.ndarray, b: np.ndarray, metric: str, b_sq: np.ndarray | None = None) -> np.ndarray:
    dot = a @ b.T
    if metric == "cosine":
        return np.subtract(1.0, dot, out=dot)
    a_sq = np.einsum("ij,ij->i", a, a)[:, None]
    b_sq = np.einsum("ij,ij->i", b, b)[None, :] if b_sq is None else b_sq[None, :]
    d2 = np.maximum(a_sq + b_sq - 2.0 * dot, 0.0)
    return np.sqrt(d2, out=d2)


def _join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The finest partition coarser than both partitions ``a`` and ``b`` of the same nodes (O(n))."""
    n = len(a)
    ka = int(a.max()) + 1
    kb = int(b.max()) + 1
    # Bipartite graph: node i -- group a[i] -- node j whenever a[i] == a[j], same for b.
    rows = np.concatenate([np.arange(n), np.arange(n)])
    cols = np.concatenate([n + a, n + ka + b])
    graph = csr_matrix((np.ones(2 * n, dtype=np.int8), (rows, cols)), shape=(n + ka + kb,) * 2)
    return connected_components(graph, directed=False)[1][:n]


def _components(x: np.ndarray, eps: float, metric: str, block: int, sq: np.ndarray | None) -> np.ndarray:
    """Connected components of the graph "distance <= eps", one upper-triangle block of rows at a time."""
    m = len(x)
    comp = np.arange(m)
    for s in range(0, m, block):
        # Symmetry: edges to rows before s were seen when those rows were the block.
        near = _distances(x[s:s + block], x[s:], metric, None if sq is None else sq[s:]) <= eps
        part = csr_matrix(near)
        indptr = np.concatenate([np.zeros(s, np.int64), part.indptr, np.full(m - s - len(near), part.nnz)])
        graph = csr_matrix((part.data, part.indices + s, indptr), shape=(m, m))
        comp = _join(comp, connected_components(graph, directed=False)[1])
    return comp


def _number_by_first(comp: np.ndarray) -> np.ndarray:
    """Renumber components 0..k-1 in order of their first member, as scikit-learn numbers clusters."""
    _, first_seen, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(first_seen), dtype=np.int64)
    rank[np.argsort(first_seen)] = np.arange(len(first_seen))
    return rank[inverse]


def blocked_dbscan(x: np.ndarray, eps: float, min_samples: int, metric: str = "cosine",
                   block: int | None = None) -> np.ndarray:
    """DBSCAN labels (-1 noise, clusters 0..k-1) of prepared rows ``x`` in O(block * n) memory."""
    n = len(x)
    block = block or _block_rows(n)
    sq = np.einsum("ij,ij->i", x, x) if metric == "euclidean" else None
    labels = np.full(n, -1, dtype=np.int64)
    if min_samples <= 2:
        # Core <=> has one neighbour besides itself: clusters are the non-singleton components.
        comp = _components(x, eps, metric, block, sq)
        sizes = np.bincount(comp)
        clustered = np.flatnonzero(sizes[comp] >= min(max(min_samples, 1), 2))
        labels[clustered] = _number_by_first(comp[clustered])
        return labels
    counts = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        counts[s:s + block] = (_distances(x[s:s + block], x, metric, sq) <= eps).sum(axis=1)
    core = np.flatnonzero(counts >= min_samples)
    if len(core) == 0:
        return labels
    sqc = None if sq is None else sq[core]
    labels[core] = _number_by_first(_components(x[core], eps, metric, block, sqc))
    border = np.flatnonzero((counts < min_samples) & (counts > 1))
    for s in range(0, len(border), block):
        rows = border[s:s + block]
        d = _distances(x[rows], x[core], metric, sqc)
        nearest = d.argmin(axis=1)
        ok = d[np.arange(len(rows)), nearest] <= eps
        labels[rows[ok]] = labels[core[nearest[ok]]]
    return labels


def dbscan_labels(x: np.ndarray, eps: float, min_samples: int, metric: str = "cosine",
                  sklearn_max: int = SKLEARN_MAX) -> np.ndarray:
    """Labels for prepared rows: scikit-learn up to ``sklearn_max`` rows, ``blocked_dbscan`` above."""
    if len(x) <= sklearn_max:
        return DBSCAN(eps=eps, min_samples=min_samples, metric=metric, algorithm="brute").fit(x).labels_
    return blocked_dbscan(x, eps, min_samples, metric)


def k_distance(x: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """Distance from each point to its k-th nearest other point, ascending (the k-distance curve)."""
    n = len(x)
    k = min(max(k, 1), n - 1)
    block = _block_rows(n)
    sq = np.einsum("ij,ij->i", x, x) if metric == "euclidean" else None
    out = np.empty(n, dtype=np.float32)
    for s in range(0, n, block):
        d = _distances(x[s:s + block], x, metric, sq)
        # Column k of the partition skips the point itself (distance 0 in column 0).
        out[s:s + block] = np.partition(d, k, axis=1)[:, k]
    return np.sort(np.maximum(out, 0.0))


def knee(curve: np.ndarray) -> int:
    """Index of the knee of an ascending curve: the point farthest below the chord from first to last."""
    n = len(curve)
    span = float(curve[-1] - curve[0])
    if n < 3 or span <= 0:
        return n - 1
    xs = np.linspace(0.0, 1.0, n)
    ys = (curve - curve[0]) / span
    return int(np.argmax(xs - ys))


def auto_eps(x: np.ndarray, eps: float, min_samples: int, metric: str = "cosine") -> float:
    """Per-class eps from the knee of the k-distance curve, kept within ``AUTO_EPS_RANGE`` of ``eps``."""
    if len(x) < AUTO_EPS_MIN_CLASS:
        return float(eps)
    curve = k_distance(x, max(min_samples - 1, 1), metric)
    lo, hi = AUTO_EPS_RANGE
    return float(np.clip(curve[knee(curve)], lo * eps, hi * eps))


def main_cluster_rule(labels: np.ndarray) -> np.ndarray:
    """Keep mask under the poster's rule: the largest cluster stays, noise and smaller clusters go.

    If two clusters tie for largest, both stay: nothing says which one is the
    landmark. If DBSCAN found no cluster at all the class is kept whole.
    """
    clustered = labels >= 0
    if not clustered.any():
        return np.ones(len(labels), dtype=bool)
    sizes = np.bincount(labels[clustered])
    return np.isin(labels, np.flatnonzero(sizes == sizes.max()))
