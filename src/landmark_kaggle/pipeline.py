"""The tf.data input pipeline: shards → parsed records → decoded, augmented, batched images.

Decoder and parser are split (tf-models official/vision): ``records.parse_example``
reads the schema, ``decode_image`` turns JPEG bytes into pixels, and then either
``train_transform`` (random resized crop, flip, colour) or ``eval_transform``
(resize the short side, centre crop) makes the ``[S, S, 3]`` float32 input in
0..255. ``eval_transform`` is exactly what inference uses.

Training randomness is stateless and keyed by the example's position in the
stream, so a run resumed at step N (``start_step``) sees the very batches an
uninterrupted run would have seen, when ``data.deterministic`` is on.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import tensorflow as tf

from landmark_kaggle import records
from landmark_kaggle.clibase import UserError
from landmark_kaggle.gld import read_label_map

AUTOTUNE = tf.data.AUTOTUNE


def list_split_shards(data_dir: str, split: str) -> list[str]:
    files = records.list_shards(str(data_dir), split)
    if not files:
        raise UserError(f"{data_dir}: no {split}-*.tfrec shards (write them with `tfrec-builder write`)")
    return files


def read_data_label_map(data_dir: str):
    """``label_map.csv`` of a shard folder, local or gs:// (copied to a temp file first)."""
    path = f"{str(data_dir).rstrip('/')}/label_map.csv"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{data_dir}: no label_map.csv beside the shards")
    if "://" not in path:
        return read_label_map(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/label_map.csv"
        tf.io.gfile.copy(path, local)
        return read_label_map(local)


def count_examples(data_dir: str, split: str) -> int:
    """Records in a split: from ``manifest.json`` when it says, else by reading the shards once."""
    manifest = f"{str(data_dir).rstrip('/')}/manifest.json"
    if tf.io.gfile.exists(manifest):
        with tf.io.gfile.GFile(manifest) as fh:
            written = json.load(fh).get("written")
        if isinstance(written, dict) and isinstance(written.get(split), int):
            return written[split]
    files = records.list_shards(str(data_dir), split)
    if not files:
        return 0
    return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1).numpy())


def decode_image(encoded) -> tf.Tensor:
    """JPEG (or PNG) bytes → uint8 ``[H, W, 3]``; greyscale and RGBA come out as RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def eval_transform(image, data_cfg) -> tf.Tensor:
    """Resize the short side to ``S / crop_fraction`` and take the centre ``S×S`` crop; float32 0..255."""
    size = data_cfg.image_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.reduce_min(shape)
    target = tf.math.ceil(size / data_cfg.crop_fraction)
    new_hw = tf.cast(tf.math.round(shape * target / short), tf.int32)
    new_hw = tf.maximum(new_hw, size)
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    crop = tf.image.crop_to_bounding_box(resized, top, left, size, size)
    return tf.reshape(tf.clip_by_value(crop, 0.0, 255.0), [size, size, 3])


def train_transform(image, data_cfg, seed) -> tf.Tensor:
    """Random resized crop, horizontal flip and colour jitter, all stateless under the ``[2]`` int seed."""
    size = data_cfg.image_size
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(data_cfg.min_crop_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    x = tf.image.resize(crop, (size, size), method="bilinear", antialias=True)
    x = tf.image.stateless_random_flip_left_right(x, seed=seeds[1])
    j = data_cfg.color_jitter
    if j > 0:
        x = x / 255.0
        x = tf.image.stateless_random_brightness(x, j, seed=seeds[2])
        x = tf.image.stateless_random_contrast(x, 1 - j, 1 + j, seed=seeds[3])
        x = tf.image.stateless_random_saturation(x, 1 - j, 1 + j, seed=seeds[4])
        x = x * 255.0
    return tf.reshape(tf.clip_by_value(x, 0.0, 255.0), [size, size, 3])


def _options(deterministic: bool) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    # DATA sharding works for any shard count; FILE sharding would need >= one file per worker.
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return opts


def build_dataset(data_dir: str, split: str, data_cfg, batch_size: int, *, training: bool, seed: int = 0,
                  start_step: int = 0, with_ids: bool = False, pad_to_batch: bool = False) -> tf.data.Dataset:
    """Batches of ``(images float32 [B,S,S,3], labels int64 [B])`` (plus ids with ``with_ids``).

    ``training``: an endless shuffled, augmented stream with full batches;
    ``start_step`` skips that many batches of it, cheaply (before decoding).
    Otherwise: one ordered pass through the eval path, the last batch partial,
    unless ``pad_to_batch``: then the pass is topped up to whole batches with
    copies of its first example and batches are ``(images, labels, weights)``,
    weight 0 on the copies (replicas of a distributed evaluation need equal shares).
    """
    files = list_split_shards(data_dir, split)
    det = bool(data_cfg.deterministic) or not training
    if training:
        fds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        fds = fds.repeat()
    else:
        fds = tf.data.Dataset.from_tensor_slices(files)
    ds = fds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
                        cycle_length=min(len(files), 16), block_length=1,
                        num_parallel_calls=AUTOTUNE, deterministic=det)
    if training:
        if data_cfg.shuffle_buffer > 1:
            ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.enumerate()
        if start_step:
            ds = ds.skip(int(start_step) * int(batch_size))

        def prepare(index, serialized):
            ex = records.parse_example(serialized)
            image = train_transform(decode_image(ex["image"]), data_cfg, tf.stack([tf.cast(seed, tf.int64), index]))
            return image, ex["label"], ex["id"]
    else:
        def prepare(serialized):
            ex = records.parse_example(serialized)
            return eval_transform(decode_image(ex["image"]), data_cfg), ex["label"], ex["id"]

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=det)
    if pad_to_batch and not training:
        missing = -count_examples(data_dir, split) % batch_size
        ds = ds.map(lambda image, label, _id: (image, label, tf.constant(1.0)))
        if missing:
            ds = ds.concatenate(ds.take(1).map(lambda image, label, _w: (image, label, tf.constant(0.0)))
                                .repeat(missing))
    elif not with_ids:
        ds = ds.map(lambda image, label, _id: (image, label))
    if data_cfg.cache and not training:
        ds = ds.cache()
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=det)
    return ds.prefetch(AUTOTUNE).with_options(_options(det))
