"""Exact top-k cosine search with the index placed once on the device (the GPU when there is one).

``DeviceIndex`` copies the unit rows onto the device once, as float16 (1.6 GB
for GLDv2's 1.58M x 512 rows), and keeps them there for every search. A search
takes many queries at once (``predict`` hands it thousands, not one inference
batch): the rows are scanned in blocks, each block widened to float32 once per
call, multiplied with the queries in sub-blocks sized to the memory left, and
each sub-block's best k merged into running top-k tensors that stay on the
device until the end. Only the final ``[Q, k]`` similarities and row numbers
come back to the host.

With ``penalty`` (float ``[N]``, B of the GLR2020 1st-place rule), every
similarity s becomes clamp(s, 0, 1) - penalty[row] before the top-k of each
block: one more vector operation per block, so B decides which rows are kept
(``scoring.glr2020_1st``), not only how the kept ones count.

Why float16 storage but float32 arithmetic: on this CPU TensorFlow's float16
matmul is about 3x slower than float32 while widening a 65,536-row block costs
next to nothing (``benchmarks/predict.py``), and on a GPU the float32 matmul
over 100k x 1.58M pairs is a matter of minutes; float16 halves the resident
memory either way.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

# Rows per scanned block: large enough that the per-block top-k merge is cheap, small enough that the widened
# float32 block (128 MB at 512 dims) is no burden anywhere.
ROW_BLOCK = 65536
# Share of the free memory one similarity block [queries, ROW_BLOCK] float32 may take: top_k and the merge
# need about as much again beside it.
SIMS_SHARE = 0.125
SIMS_CAP = 1 << 30
# Query sub-blocks kept on the device in one pass over the rows.
PASS_BLOCKS = 16
# When the GPU's size cannot be read: Kaggle's T4 and P100 both have 16 GB.
DEFAULT_GPU_BYTES = 16 << 30


def gpu_devices() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def _gpu_total_bytes() -> int:
    """The first GPU's memory from nvidia-smi; TensorFlow reports only what it has allocated."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            return int(float(out.strip().splitlines()[0])) << 20
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return DEFAULT_GPU_BYTES


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device: str) -> int:
    """Memory free for search temporaries on ``device`` now."""
    if "GPU" not in device.upper():
        return host_available_bytes()
    import tensorflow as tf

    try:
        used = int(tf.config.experimental.get_memory_info(device.split("device:")[-1])["current"])
    except (ValueError, KeyError):
        used = 0
    return max(int(_gpu_total_bytes() * 0.9) - used, 256 << 20)


def sims_budget(device: str) -> int:
    """Bytes one float32 similarity block may take on ``device``."""
    return max(min(int(available_bytes(device) * SIMS_SHARE), SIMS_CAP), 16 << 20)


class DeviceIndex:
    """Unit rows resident on one device for repeated exact top-k search.

    ``rows`` float16 or float32 ``[N, D]``; they are copied to the device once
    (as float16) and the host copy may be dropped afterwards. ``penalty``
    (float ``[N]``): every search ranks and returns clamp(s, 0, 1) - penalty[row]
    instead of s; +inf keeps a row out of every answer.
    """

    def __init__(self, rows: np.ndarray, device: str | None = None, row_block: int = ROW_BLOCK,
                 penalty: np.ndarray | None = None):
        import tensorflow as tf

        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise ValueError(f"index rows must be [N, D], got shape {rows.shape}")
        gpus = gpu_devices()
        self.device = device or (gpus[0] if gpus else "/CPU:0")
        self.row_block = max(1, int(row_block))
        self.shape = rows.shape
        with tf.device(self.device):
            # identity moves the host constant onto the device (a no-op on the CPU).
            self.rows = tf.identity(tf.constant(rows.astype(np.float16, copy=False)))
            self.penalty = None
            if penalty is not None:
                penalty = np.asarray(penalty, np.float32)
                if penalty.shape != (len(rows),):
                    raise ValueError(f"penalty of shape {penalty.shape} for {len(rows)} index rows")
                self.penalty = tf.identity(tf.constant(penalty))

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def dim(self) -> int:
        return int(self.shape[1])

    def query_block(self, num_queries: int, budget: int | None = None) -> int:
        """Queries multiplied at once against one row block, from the memory free on the device."""
        budget = sims_budget(self.device) if budget is None else budget
        return int(max(1, min(num_queries, budget // (4 * min(self.row_block, max(len(self), 1))))))

    def search(self, queries: np.ndarray, k: int, *, query_block: int | None = None,
               budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarity of each query against every row, best first: (sims float32, rows int64).

        With a ``penalty`` the similarities are clamp(s, 0, 1) - penalty[row], ranked as such.
        """
        import tensorflow as tf

        q, n = len(queries), len(self)
        if np.ndim(queries) != 2 or np.shape(queries)[1] != self.dim:
            raise ValueError(f"queries of shape {np.shape(queries)} against an index of {self.dim} dims")
        k = min(int(k), n)
        if q == 0 or k == 0:
            return np.zeros((q, k), np.float32), np.zeros((q, k), np.int64)
        qb = query_block or self.query_block(q, budget)
        if q > qb * PASS_BLOCKS:
            # Bound the queries widened and resident at once: B of a 1.58M-row index searches every row (a
            # memory-mapped float16 matrix, read one pass at a time).
            step = qb * PASS_BLOCKS
            got = [self.search(queries[s:s + step], k, query_block=qb) for s in range(0, q, step)]
            return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        queries = np.asarray(queries, np.float32)
        with tf.device(self.device):
            parts = [tf.constant(queries[s:s + qb]) for s in range(0, q, qb)]
            best_s: list = [None] * len(parts)
            best_i: list = [None] * len(parts)
            for start in range(0, n, self.row_block):
                block = tf.cast(self.rows[start:start + self.row_block], tf.float32)
                kb = min(k, int(block.shape[0]))
                for j, part in enumerate(parts):
                    scores = tf.matmul(part, block, transpose_b=True)
                    if self.penalty is not None:
                        scores = tf.clip_by_value(scores, 0.0, 1.0) - self.penalty[None, start:start + self.row_block]
                    s, i = tf.math.top_k(scores, kb)
                    i = tf.cast(i, tf.int64) + start
                    if best_s[j] is not None:
                        both = tf.concat([best_s[j], s], axis=1)
                        s, pos = tf.math.top_k(both, min(k, int(both.shape[1])))
                        i = tf.gather(tf.concat([best_i[j], i], axis=1), pos, batch_dims=1)
                    best_s[j], best_i[j] = s, i
            sims = tf.concat(best_s, axis=0).numpy()
            rows = tf.concat(best_i, axis=0).numpy()
        return sims, rows


def search(queries: np.ndarray, matrix: np.ndarray, k: int, block_rows: int = ROW_BLOCK,
           query_block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-off search: place ``matrix`` and search it once (for repeated searches keep a ``DeviceIndex``)."""
    return DeviceIndex(matrix, row_block=block_rows).search(queries, k, query_block=query_block)


def mean_top_similarity(queries: np.ndarray, index: DeviceIndex, k: int) -> np.ndarray:
    """Each query's mean similarity to its k nearest rows (B and C of the GLR2020 1st-place rule, the
    non-landmark suppression); float32 ``[Q]``."""
    sims, _ = index.search(queries, k)
    return sims.mean(axis=1) if sims.shape[1] else np.zeros(len(sims), np.float32)
