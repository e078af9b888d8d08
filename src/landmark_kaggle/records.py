"""The one TFRecord schema for GLDv2 shards: feature keys, the writer's encoder and tf.data's parser.

The keys are those of the GLDv2 builder in tensorflow/models (DELF), so its
readers and ours read the same shards, plus ``image/class/landmark_id`` so a
record names its landmark without the label map. ``tfrec_builder`` writes
with ``encode_example``; the training pipeline reads with ``parse_example``.
Shards are ``<split>-%05d-of-%05d.tfrec`` in one folder, local or ``gs://``.
"""

from __future__ import annotations

import re

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

# Every key has a default except the image itself, so a reader of ours also
# reads DELF's own shards (which lack ``image/class/landmark_id``).
FEATURES = {
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


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(*, image_bytes: bytes, image_id: str, label: int, landmark_id: int,
                   height: int, width: int, channels: int = 3) -> bytes:
    """One serialized ``tf.train.Example``; the same arguments always give the same bytes."""
    ident = image_id.encode("ascii")
    features = {
        KEY_ENCODED: _bytes(image_bytes),
        KEY_ID: _bytes(ident),
        # DELF's builder writes the id under both names; its reader wants the filename.
        KEY_FILENAME: _bytes(ident),
        KEY_LABEL: _int64(label),
        KEY_LANDMARK_ID: _int64(landmark_id),
        KEY_HEIGHT: _int64(height),
        KEY_WIDTH: _int64(width),
        KEY_CHANNELS: _int64(channels),
        KEY_FORMAT: _bytes(IMAGE_FORMAT),
        KEY_COLORSPACE: _bytes(COLORSPACE),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # Protobuf map order is unspecified unless asked: resumed shards must match byte for byte.
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialized record (graph-safe, for ``tf.data.Dataset.map``).

    Returns ``image`` (encoded JPEG, tf.string), ``id`` (tf.string), ``label``,
    ``landmark_id``, ``height`` and ``width`` (tf.int64).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
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
    pattern = f"{str(data_dir).rstrip('/')}/{split}-*-of-*{SHARD_SUFFIX}"
    return sorted(p for p in tf.io.gfile.glob(pattern) if parse_shard_name(p) and parse_shard_name(p)[0] == split)
