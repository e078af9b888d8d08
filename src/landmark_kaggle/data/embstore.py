"""The embeddings store: one float16 vector per image, written in chunks, read as one memory-mapped matrix.

Layout of a store folder::

    meta.json        backend, weights file + sha256, image size, dim, count, chunk size, complete flag
    ids.npy          the N image ids (16-hex str) in row order
    matrix.npy       float16 [N, D], preallocated; chunk k owns rows [k*chunk, (k+1)*chunk)
                     (``embed`` stores L2-normalised rows: float16 keeps direction, not every magnitude)
    chunks/00007.json  written only after chunk 7's rows are flushed: its sha256 and unreadable ids
    probe.npy        float32 [D], the backend's embedding of a fixed synthetic image (a fingerprint)
    failed.csv       id,reason for images that could not be read (their rows are NaN)

Why one preallocated matrix rather than one file per chunk: the reader wants a
single ``np.load(mmap_mode="r")`` over 1.58M x 512 rows (1.6 GB) without a
second copy on disk, and a chunk marker that is written after its rows are
flushed makes a kill mid-chunk harmless: that chunk is simply redone.
A resume must ask for the same backend, weights, image size, chunk size and
ids; anything else would mix two embedding spaces in one matrix, so it is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_write_json

FORMAT = 1
META = "meta.json"
IDS = "ids.npy"
MATRIX = "matrix.npy"
PROBE = "probe.npy"
FAILED = "failed.csv"
CHUNKS = "chunks"
# Settings a resumed run must repeat exactly.
RESUME_KEYS = ("backend", "weights_sha256", "image_size", "dim", "count", "chunk_size", "ids_sha256")


class StoreError(UserError):
    """A store that is missing, incomplete or inconsistent; the message names the folder."""


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload, sort_keys=True)


def probe_image(size: int = 256) -> np.ndarray:
    """A fixed synthetic RGB image (gradients and a checkerboard), uint8 ``[S, S, 3]``.

    Its embedding, stored as ``probe.npy``, fingerprints the network that made a
    store: the same network and weights reproduce it, any other does not.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    checker = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 80
    rgb = np.stack([xx * 255, yy * 175 + checker, (1 - xx) * 120 + checker], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def chunks_done(path: str | os.PathLike) -> int:
    """Chunk markers in a store folder; not a marker's temporary file (.00003.<pid>.tmp.json) a kill left."""
    return len(list((Path(path) / CHUNKS).glob("[0-9]*.json")))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


@dataclass
class EmbeddingStore:
    """A finished store. ``matrix`` is memory-mapped: slicing reads only the rows asked for."""

    path: Path
    ids: np.ndarray
    matrix: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def probe(self) -> np.ndarray | None:
        p = self.path / PROBE
        return np.load(p) if p.is_file() else None

    def failed(self) -> pd.DataFrame:
        p = self.path / FAILED
        if not p.is_file():
            return pd.DataFrame({"id": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
        return pd.read_csv(p, dtype=str, keep_default_na=False)

    def rows_for(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """Row index of each id; ids absent from the store raise, naming the first few."""
        order = np.argsort(self.ids)
        sorted_ids = self.ids[order]
        ids = np.asarray(ids, dtype=sorted_ids.dtype)
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != ids
        if missing.any():
            head = ", ".join(ids[missing][:5])
            raise StoreError(f"{self.path}: {int(missing.sum())} of {len(ids)} image id(s) are not in the store "
                             f"(first: {head}); was it embedded from a different data folder?")
        return order[pos]


def open_store(path: str | os.PathLike, *, allow_incomplete: bool = False) -> EmbeddingStore:
    """Open a store for reading; refuse one whose files disagree with its ``meta.json``."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path}: embeddings store not found (run `tfrec-builder embed` first)")
    meta = _read_json(path / META)
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path / META}: format {meta.get('format')!r}, this version reads format {FORMAT}")
    if not meta.get("complete") and not allow_incomplete:
        done = chunks_done(path)
        total = -(-int(meta["count"]) // int(meta["chunk_size"]))
        raise StoreError(f"{path}: incomplete store ({done} of {total} chunks written); "
                         "rerun the same `tfrec-builder embed` command to finish it")
    try:
        ids = np.load(path / IDS)
        matrix = np.load(path / MATRIX, mmap_mode="r")
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: missing {Path(exc.filename).name}") from None
    if matrix.dtype != np.float16 or matrix.ndim != 2:
        raise StoreError(f"{path / MATRIX}: expected a float16 [N, D] matrix, found {matrix.dtype} {matrix.shape}")
    if matrix.shape != (len(ids), int(meta["dim"])) or len(ids) != int(meta["count"]):
        raise StoreError(f"{path}: {MATRIX} is {matrix.shape[0]} x {matrix.shape[1]} and {IDS} has {len(ids)} ids, "
                         f"but {META} says {meta['count']} x {meta['dim']} ({meta.get('backend')}); "
                         "the files come from different runs")
    if ids_digest(ids) != meta.get("ids_sha256"):
        raise StoreError(f"{path}: {IDS} does not match the ids_sha256 in {META}; the files come from different runs")
    return EmbeddingStore(path=path, ids=ids, matrix=matrix, meta=meta)


class StoreWriter:
    """Create a store, or resume one that was started with the same settings."""

    def __init__(self, path: str | os.PathLike, ids: np.ndarray, meta: dict[str, Any], dim: int,
                 chunk_size: int, probe: np.ndarray | None = None):
        self.path = Path(path)
        self.ids = np.asarray(ids).astype(str)
        if chunk_size < 1:
            raise StoreError(f"chunk size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.meta = dict(meta, format=FORMAT, dim=int(dim), count=len(self.ids), chunk_size=self.chunk_size,
                         ids_sha256=ids_digest(self.ids), dtype="float16", complete=False)
        if (self.path / META).is_file():
            self._check_resume(probe)
        else:
            self._create(probe)
        self.matrix = np.load(self.path / MATRIX, mmap_mode="r+")

    @property
    def num_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk_size)

    def chunk_rows(self, k: int) -> slice:
        return slice(k * self.chunk_size, min((k + 1) * self.chunk_size, len(self.ids)))

    def _marker(self, k: int) -> Path:
        return self.path / CHUNKS / f"{k:05d}.json"

    def pending(self) -> list[int]:
        return [k for k in range(self.num_chunks) if not self._marker(k).is_file()]

    def _create(self, probe: np.ndarray | None) -> None:
        (self.path / CHUNKS).mkdir(parents=True, exist_ok=True)
        np.save(self.path / IDS, self.ids)
        if probe is not None:
            np.save(self.path / PROBE, np.asarray(probe, np.float32))
        np.lib.format.open_memmap(self.path / MATRIX, mode="w+", dtype=np.float16,
                                  shape=(len(self.ids), self.meta["dim"])).flush()
        # meta.json last: its presence means the folder is a store that can be resumed.
        _write_json(self.path / META, self.meta)

    def _check_resume(self, probe: np.ndarray | None) -> None:
        old = _read_json(self.path / META)
        for key in RESUME_KEYS:
            if old.get(key) != self.meta.get(key):
                what = "the image ids" if key == "ids_sha256" else f"{key} {old.get(key)!r}"
                raise StoreError(f"{self.path}: this store was started with {what}, the new run asks for "
                                 f"{self.meta.get(key)!r} (ids: {len(self.ids)}); use another output folder "
                                 "or delete this one")
        if probe is not None and (self.path / PROBE).is_file():
            check_probe(self.path, np.load(self.path / PROBE), probe, self.meta["backend"])
        self.meta["complete"] = False

    def write_chunk(self, k: int, rows: np.ndarray, failed: list[tuple[str, str]] = ()) -> None:
        sl = self.chunk_rows(k)
        rows = np.asarray(rows, dtype=np.float16)
        if rows.shape != (sl.stop - sl.start, self.meta["dim"]):
            raise ValueError(f"chunk {k}: expected {(sl.stop - sl.start, self.meta['dim'])}, got {rows.shape}")
        self.matrix[sl] = rows
        self.matrix.flush()
        _write_json(self._marker(k), {"rows": [sl.start, sl.stop], "sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
                                      "failed": [list(f) for f in failed]})

    def finalize(self) -> Path:
        pending = self.pending()
        if pending:
            raise StoreError(f"{self.path}: cannot finalize, chunks {pending[:5]} not written")
        failed = []
        for k in range(self.num_chunks):
            failed.extend(_read_json(self._marker(k))["failed"])
        pd.DataFrame(failed, columns=["id", "reason"]).to_csv(self.path / FAILED, index=False)
        self.meta.update(complete=True, failed=len(failed))
        _write_json(self.path / META, self.meta)
        del self.matrix
        return self.path


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def check_probe(path: Path, stored: np.ndarray, fresh: np.ndarray, backend: str, tol: float = 1e-2) -> None:
    """Refuse a store whose fingerprint differs from what ``backend`` computes now.

    The probe is a fixed synthetic image; the same network and weights give
    the same direction up to float noise, any other network or weights do not.
    """
    stored = np.asarray(stored, np.float32).ravel()
    fresh = np.asarray(fresh, np.float32).ravel()
    if stored.shape != fresh.shape:
        raise StoreError(f"{path}: {PROBE} has {stored.size} dims but {backend} gives {fresh.size}: "
                         "the store was not made by this backend")
    # Directions, not magnitudes: a randomly initialised network can output vectors of norm 1e-9.
    err = float(np.abs(_unit(stored) - _unit(fresh)).max())
    if not np.isfinite(err) or err > tol:
        raise StoreError(f"{path}: the store's probe embedding differs from {backend}'s (relative error {err:.3g}); "
                         f"{META} names a backend or weights that did not write this store")
