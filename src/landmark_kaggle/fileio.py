"""Writing files so that a kill never leaves half of one, and hashing files, for every stage.

Every output another stage or a resumed run reads (shards' manifests, store
markers, model folders, checkpoints' state, submissions, reports) is written
to a temporary name beside its target and renamed into place: a rename within
a folder is atomic, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block ends without error it becomes ``path``.

    The temporary name keeps the target's suffix (Keras picks the format from it)
    and carries the process id, so two writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; ``durable`` also fsyncs before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    return path


def atomic_write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      durable: bool = False) -> Path:
    return atomic_write(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n", durable=durable)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
