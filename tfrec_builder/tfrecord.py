"""TFRecord framing written from Python, hashing the shard as it goes: what ``write`` writes shards with.

A TFRecord file is a run of frames: the record's length (uint64, little
endian), the masked CRC-32C of those 8 bytes, the record, and the masked
CRC-32C of the record. ``tf.io.TFRecordWriter`` writes the same bytes (a test
compares them), but it is slower than the disk on the copy path (~620 MB/s
measured here against ~450 MB/s reads) and the manifest's sha256 then needs a
second pass over every finished shard. Here the CRC is hardware CRC-32C
(``google-crc32c``), the sha256 is updated from the same buffers as they are
written, and nothing imports TensorFlow, so a write worker starts in a second.
"""

from __future__ import annotations

import hashlib
import os
import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of ``data``, rotated and offset as TFRecord stores it (so CRCs of CRCs stay strong)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> tuple[bytes, bytes]:
    """The header (length + its CRC) and footer (record CRC) that surround ``record`` in the file."""
    length = _U64.pack(len(record))
    return length + _U32.pack(masked_crc32c(length)), _U32.pack(masked_crc32c(record))


class RecordWriter:
    """Append records to a new TFRecord file; ``sha256`` and ``bytes`` describe what was written.

    Used as a context manager; the file is flushed and closed on exit, never
    fsynced: the caller decides when a finished file becomes durable or visible.
    """

    def __init__(self, path: str | os.PathLike, buffer_bytes: int = 1 << 20):
        self._fh = open(path, "wb", buffering=buffer_bytes)  # noqa: SIM115 (closed by close/__exit__)
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.count = 0

    def write(self, record: bytes) -> None:
        head, foot = frame(record)
        for piece in (head, record, foot):
            self._sha.update(piece)
            self._fh.write(piece)
        self.bytes += len(head) + len(record) + len(foot)
        self.count += 1

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
