"""The one TFRecord schema for GLDv2 shards: feature keys, the writer's encoder and tf.data's parser.

The keys are those of the GLDv2 builder in tensorflow/models (DELF), so its
readers and ours read the same shards, plus ``image/class/landmark_id`` so a
record names its landmark without the label map. ``tfrec_builder`` writes
with ``encode_example``; the training pipeline reads with ``parse_example``.
Shards are ``<split>-%05d-of-%05d.tfrec`` in one folder, local or ``gs://``.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

KEY_ENCODED = "image/encoded"
KEY_ID = "image/id"
KEY_FILENAME = "image/filename"
KEY_LABEL = "image/class/label"
KEY_LANDMARK_ID = "image/class/landmark_id"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_FORMAT = "image/format"
KEY_COLORSPACE = "image/colorspace"

IMAGE_FORMAT = b"JPEG"
COLORSPACE = b"RGB"
SPLITS = ("train", "validation")
SHARD_SUFFIX = ".tfrec"
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.tfrec$")


def feature_spec() -> dict:
    """``tf.io.parse_single_example`` spec. Every key but the image has a default, so our reader
    also reads DELF's own shards (which lack ``image/class/landmark_id``)."""
    import tensorflow as tf

    return {
        KEY_ENCODED: tf.io.FixedLenFeature([], tf.string),
        KEY_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEY_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        KEY_LANDMARK_ID: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        KEY_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        KEY_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        KEY_CHANNELS: tf.io.FixedLenFeature([], tf.int64, default_value=3),
        KEY_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
        KEY_COLORSPACE: tf.io.FixedLenFeature([], tf.string, default_value="RGB"),
    }


# encode_example writes the tf.train.Example wire format itself. It must not
# import TensorFlow: the writer's worker processes would each pay a TF import
# (measured 20 s apiece with two starting at once on the 2-core box) just to
# build protobufs; and the bytes take half the time to make (35 vs 75 us for a
# 55 KB image, measured side by side). The output equals
# ``tf.train.Example(...).SerializeToString(deterministic=True)`` byte for byte
# (tests/test_records.py checks it): map entries in sorted key order.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as protobuf writes it: ten bytes, two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, varint length, payload."""
    return tag + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _ld(b"\x0a", _ld(b"\x0a", value))  # Feature.bytes_list(1) -> BytesList.value(1)


def _int64_feature(value: int) -> bytes:
    return _ld(b"\x1a", _ld(b"\x0a", _varint(value)))  # Feature.int64_list(3) -> Int64List.value(1), packed


def _entry(key: str, feature: bytes) -> bytes:
    # Features.feature(1) is a map: each entry is a message of key(1) and value(2).
    return _ld(b"\x0a", _ld(b"\x0a", key.encode()) + _ld(b"\x12", feature))


@functools.lru_cache(maxsize=1 << 16)
def _int64_entry(key: str, value: int) -> bytes:
    # Labels, sizes and channels repeat across records, so their entries are built once each.
    return _entry(key, _int64_feature(value))


_CONSTANT = {KEY_FORMAT: _entry(KEY_FORMAT, _bytes_feature(IMAGE_FORMAT)),
             KEY_COLORSPACE: _entry(KEY_COLORSPACE, _bytes_feature(COLORSPACE))}
_ORDER = sorted([KEY_ENCODED, KEY_ID, KEY_FILENAME, KEY_LABEL, KEY_LANDMARK_ID, KEY_HEIGHT, KEY_WIDTH,
                 KEY_CHANNELS, *_CONSTANT])
_ENCODED_KEY = _ld(b"\x0a", KEY_ENCODED.encode())


def encode_example_parts(*, image_bytes: bytes, image_id: str, label: int, landmark_id: int,
                         height: int, width: int, channels: int = 3) -> tuple[bytes, bytes, bytes]:
    """``encode_example``'s bytes as (before the image, the image itself, after it), so a writer can
    hash and write the image without copying it into a new buffer first."""
    ident = _bytes_feature(image_id.encode("ascii"))
    parts = dict(_CONSTANT)
    parts[KEY_ID] = _entry(KEY_ID, ident)
    # DELF's builder writes the id under both names; its reader wants the filename.
    parts[KEY_FILENAME] = _entry(KEY_FILENAME, ident)
    for key, value in ((KEY_LABEL, label), (KEY_LANDMARK_ID, landmark_id), (KEY_HEIGHT, height),
                       (KEY_WIDTH, width), (KEY_CHANNELS, channels)):
        parts[key] = _int64_entry(key, int(value))
    # The image is the one large value: its enclosing headers are computed from lengths.
    n = len(image_bytes)
    h1 = b"\x0a" + _varint(n)
    h2 = b"\x0a" + _varint(len(h1) + n)
    h3 = b"\x12" + _varint(len(h2) + len(h1) + n)
    h4 = b"\x0a" + _varint(len(_ENCODED_KEY) + len(h3) + len(h2) + len(h1) + n)
    parts[KEY_ENCODED] = b"".join((h4, _ENCODED_KEY, h3, h2, h1))
    at = _ORDER.index(KEY_ENCODED)
    before = b"".join(parts[key] for key in _ORDER[:at + 1])
    after = b"".join(parts[key] for key in _ORDER[at + 1:])
    total = len(before) + n + len(after)
    return b"\x0a" + _varint(total) + before, image_bytes, after  # Example.features(1)


def encode_example(*, image_bytes: bytes, image_id: str, label: int, landmark_id: int,
                   height: int, width: int, channels: int = 3) -> bytes:
    """One serialized ``tf.train.Example``; the same arguments always give the same bytes."""
    return b"".join(encode_example_parts(image_bytes=image_bytes, image_id=image_id, label=label,
                                         landmark_id=landmark_id, height=height, width=width, channels=channels))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialized record (graph-safe, for ``tf.data.Dataset.map``).

    Returns ``image`` (encoded JPEG, tf.string), ``id`` (tf.string), ``label``,
    ``landmark_id``, ``height`` and ``width`` (tf.int64).
    """
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    return {
        "image": parsed[KEY_ENCODED],
        "id": parsed[KEY_ID],
        "label": parsed[KEY_LABEL],
        "landmark_id": parsed[KEY_LANDMARK_ID],
        "height": parsed[KEY_HEIGHT],
        "width": parsed[KEY_WIDTH],
    }


def shard_name(split: str, index: int, total: int) -> str:
    """``<split>-%05d-of-%05d.tfrec``; ``index`` counts from 0."""
    if not 0 <= index < total:
        raise ValueError(f"shard index {index} not in 0..{total - 1}")
    return f"{split}-{index:05d}-of-{total:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """``(split, index, total)`` for a shard file name, or None if it is not one."""
    m = _SHARD_RE.match(name.rsplit("/", 1)[-1])
    if not m:
        return None
    return m["split"], int(m["index"]), int(m["total"])


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted full paths of ``<split>-*-of-*.tfrec`` in ``data_dir`` (local or ``gs://``)."""
    import tensorflow as tf

    pattern = f"{str(data_dir).rstrip('/')}/{split}-*-of-*{SHARD_SUFFIX}"
    return sorted(p for p in tf.io.gfile.glob(pattern) if parse_shard_name(p) and parse_shard_name(p)[0] == split)
