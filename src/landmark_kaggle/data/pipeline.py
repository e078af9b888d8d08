"""The tf.data input pipeline: shards → parsed records → decoded, augmented, batched images.

Decoder and parser are split (tf-models official/vision): ``records.parse_example``
reads the schema, ``decode_image`` turns JPEG bytes into pixels, and then either
``train_transform`` (random resized crop, flip, colour) or ``eval_transform``
(resize the short side, centre crop) makes the ``[S, S, 3]`` float32 input in
0..255; the training stream rounds it to uint8 for the trip to the devices.
``eval_transform`` is exactly what inference uses.

Training randomness is stateless and keyed by the example's position in the
stream, so a run resumed at step N (``start_step``) sees the very batches an
uninterrupted run would have seen, when ``data.deterministic`` is on.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from landmark_kaggle.data import records
from landmark_kaggle.data.gld import hex_id_mask, read_label_map
from landmark_kaggle.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE


# A shard source: one folder, several, or glob patterns; a folder holding no shards but part folders that do
# (``tfrec-builder write --max-part-gb``) stands for its parts.
DataDirs = str | os.PathLike | Sequence[str | os.PathLike]


def _has_shards(folder: str) -> bool:
    return any(records.list_shards(folder, split) for split in records.SPLITS)


def resolve_data_dirs(data: DataDirs) -> list[str]:
    """Every shard folder ``data`` names, in a stable order; a clear error for a name that matches nothing."""
    values = [data] if isinstance(data, str | os.PathLike) else list(data)
    if not values:
        raise UserError("no shard folder given (--data)")
    out: list[str] = []
    for value in map(str, values):
        matches = sorted(tf.io.gfile.glob(value)) if any(c in value for c in "*?[") else [value]
        if not matches:
            raise UserError(f"--data {value}: no folder matches")
        for folder in matches:
            folder = folder.rstrip("/")
            if not tf.io.gfile.isdir(folder):
                raise UserError(f"--data {folder}: not a folder")
            if _has_shards(folder):
                out.append(folder)
                continue
            parts = sorted(f"{folder}/{c.rstrip('/')}" for c in tf.io.gfile.listdir(folder))
            parts = [c for c in parts if tf.io.gfile.isdir(c) and _has_shards(c)]
            if not parts:
                raise UserError(f"{folder}: no *.tfrec shards here or in its sub-folders "
                                "(write them with `tfrec-builder write`)")
            out += parts
    return list(dict.fromkeys(out))


def shard_files(data: DataDirs, splits: Sequence[str] = ("train", "validation")) -> list[str]:
    """The shards of ``splits`` over every folder of ``data``; an error when there are none."""
    dirs = resolve_data_dirs(data)
    files = [f for d in dirs for split in splits for f in records.list_shards(d, split)]
    if not files:
        raise UserError(f"no {'/'.join(splits)}-*-of-*.tfrec shards in {', '.join(dirs)} "
                        "(write them with `tfrec-builder write`)")
    return files


def _read_label_map_file(path: str):
    if "://" not in path:
        return read_label_map(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/label_map.csv"
        tf.io.gfile.copy(path, local)
        return read_label_map(local)


def read_data_label_map(data: DataDirs):
    """The one ``label_map.csv`` of the shard folders (local or gs://); folders whose maps differ are an error."""
    first, first_path = None, None
    for folder in resolve_data_dirs(data):
        path = f"{folder}/label_map.csv"
        if not tf.io.gfile.exists(path):
            raise UserError(f"{folder}: no label_map.csv beside the shards")
        label_map = _read_label_map_file(path)
        if first is None:
            first, first_path = label_map, path
        elif not first.equals(label_map):
            raise UserError(f"{first_path} and {path} differ: shards of one training run must share one label map "
                            "(parts of one `tfrec-builder write`)")
    return first


def count_examples(data: DataDirs, split: str) -> int:
    """Records in a split over every folder: from each ``manifest.json`` when it says, else by reading the shards."""
    total = 0
    for folder in resolve_data_dirs(data):
        manifest = f"{folder}/manifest.json"
        written = None
        if tf.io.gfile.exists(manifest):
            with tf.io.gfile.GFile(manifest) as fh:
                written = json.load(fh).get("written")
        if isinstance(written, dict) and isinstance(written.get(split), int):
            total += written[split]
            continue
        files = records.list_shards(folder, split)
        if files:
            total += int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1).numpy())
    return total


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


def build_dataset(data: DataDirs, split: str, data_cfg, batch_size: int, *, training: bool, seed: int = 0,
                  start_step: int = 0, with_ids: bool = False, pad_to_batch: bool = False,
                  feed_dtype: str = "uint8") -> tf.data.Dataset:
    """Batches of ``(images [B,S,S,3], labels int64 [B])`` (plus ids with ``with_ids``), pixels in 0..255.

    ``training``: an endless shuffled, augmented stream with full batches, its
    images rounded to ``feed_dtype`` (uint8: a quarter of float32's bytes on the
    way to the devices; the model casts them to float and rescales them itself);
    ``start_step`` skips that many batches of it, cheaply (before decoding).
    Otherwise: one ordered pass through the eval path, the last batch partial,
    unless ``pad_to_batch``: then the pass is topped up to whole batches with
    copies of its first example and batches are ``(images, labels, weights)``,
    weight 0 on the copies (replicas of a distributed evaluation need equal shares).
    """
    files = shard_files(data, (split,))
    det = bool(data_cfg.deterministic) or not training
    if training:
        # Each round over the files in its own order, keyed by (seed, round) alone: every iterator over this
        # dataset yields the same stream, however many were started before it (Keras on JAX starts one to
        # look at a batch before training).
        names = tf.constant(files)
        fds = tf.data.Dataset.counter().flat_map(lambda r: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(names, seed=tf.stack([tf.cast(seed, tf.int64), r]))))
    else:
        fds = tf.data.Dataset.from_tensor_slices(files)
    ds = fds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
                        cycle_length=min(len(files), 16), block_length=1,
                        num_parallel_calls=AUTOTUNE, deterministic=det)
    if training:
        if data_cfg.shuffle_buffer > 1:
            ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        ds = ds.enumerate()
        if start_step:
            ds = ds.skip(int(start_step) * int(batch_size))

        def prepare(index, serialized):
            ex = records.parse_example(serialized)
            image = train_transform(decode_image(ex["image"]), data_cfg, tf.stack([tf.cast(seed, tf.int64), index]))
            if feed_dtype == "uint8":
                image = tf.cast(tf.round(image), tf.uint8)
            return image, ex["label"], ex["id"]
    else:
        def prepare(serialized):
            ex = records.parse_example(serialized)
            return eval_transform(decode_image(ex["image"]), data_cfg), ex["label"], ex["id"]

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=det)
    if pad_to_batch and not training:
        missing = -count_examples(data, split) % batch_size
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


# -- the evaluation datasets inference reads: every image through ``eval_transform``, each carrying its id ----------
# ``data_cfg`` may be one DataConfig or a sequence of them (an ensemble of models with different input sizes):
# then each image comes as a tuple of views, one per config, all decoded from the same bytes.


def eval_views(image, data_cfg):
    """``eval_transform`` under one config, or a tuple of views under several."""
    if isinstance(data_cfg, list | tuple):
        return tuple(eval_transform(image, c) for c in data_cfg)
    return eval_transform(image, data_cfg)


def list_images(folder) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every ``<id>.jpg`` under folder (any depth), sorted by id; names that are not ids are returned apart."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist")
    files = sorted(folder.rglob("*.jpg"), key=lambda p: p.stem)
    stems = np.array([p.stem for p in files], dtype=object)
    ok = hex_id_mask(stems) if len(stems) else np.zeros(0, bool)
    skipped = [str(p) for p, good in zip(files, ok, strict=True) if not good]
    return stems[ok].astype(str), np.array([str(p) for p in files], dtype=object)[ok].astype(str), skipped


def image_folder_dataset(ids, files, data_cfg) -> tf.data.Dataset:
    """(id, image) pairs; an unreadable file raises inside tf.data and is dropped by ignore_errors (then counted).

    Order is not kept (each image carries its id), so a slow file never holds up the batch behind it.
    """
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(ids, str), np.asarray(files, str)))
    ds = ds.map(lambda i, p: (i, eval_views(decode_image(tf.io.read_file(p)), data_cfg)),
                num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.ignore_errors()


def tfrec_files(patterns: str | Sequence[str]) -> list[str]:
    """Shard files named by one or several glob patterns (local or gs://), sorted, each once."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(tf.io.gfile.glob(str(pattern)))
        if not matches:
            raise UserError(f"--tfrec {pattern}: no files match")
        files += matches
    return list(dict.fromkeys(files))


def check_label_maps(files) -> None:
    """Shard files from several folders (``--tfrec`` patterns): the label maps beside them must be one."""
    folders = [d for d in dict.fromkeys(str(f).rsplit("/", 1)[0] for f in files)
               if tf.io.gfile.exists(f"{d}/label_map.csv")]
    if len(folders) > 1:
        read_data_label_map(folders)


def tfrec_ids(files) -> tuple[np.ndarray, np.ndarray]:
    """Ids and landmark ids of every record, in file order (a parse-only pass, no decoding)."""
    ds = tf.data.TFRecordDataset(files).map(records.parse_example).map(lambda r: (r["id"], r["landmark_id"]))
    ids, lids = [], []
    for i, lid in ds.batch(4096).as_numpy_iterator():
        ids += [x.decode() for x in i]
        lids.append(lid)
    return np.array(ids, str), (np.concatenate(lids) if lids else np.zeros(0, np.int64))


def tfrec_eval_dataset(files, data_cfg, skip: int = 0, take: int = -1) -> tf.data.Dataset:
    """(id, image) pairs of records ``skip`` … ``skip + take`` of the shards, through the eval path."""
    ds = tf.data.TFRecordDataset(files).map(records.parse_example).skip(skip).take(take)
    ds = ds.map(lambda r: (r["id"], eval_views(decode_image(r["image"]), data_cfg)),
                num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.ignore_errors()
