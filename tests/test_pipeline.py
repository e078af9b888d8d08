"""The tf.data pipeline on real JPEGs: decode, eval path, stateless augmentation, exact resume by step."""


import cv2
import numpy as np
import tensorflow as tf
from helpers import REALDATA

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.data.pipeline import (
    build_dataset,
    count_examples,
    decode_image,
    eval_transform,
    read_data_label_map,
    train_transform,
)

REAL = REALDATA


def _cfg(*sets):
    return config_from_dict({}, ["data.image_size=32", *sets]).data


def test_decode_matches_opencv_and_eval_transform_is_a_centre_crop():
    path = sorted(REAL.glob("*.jpg"))[0]
    image = decode_image(tf.constant(path.read_bytes())).numpy()
    ref = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert image.shape == ref.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - ref.astype(int)).mean() < 2.0  # libjpeg vs libjpeg-turbo rounding
    # A left half black, right half white image: the centre crop keeps the edge in the middle.
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 40:] = 255
    out = eval_transform(tf.constant(img), _cfg("data.crop_fraction=1.0")).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out[:, :14].max() < 1 and out[:, 18:].min() > 254
    # Short side 40 → 32/0.5 = 64 before a centre 32 crop: the crop sees only the middle of the image.
    out = eval_transform(tf.constant(img), _cfg("data.crop_fraction=0.5")).numpy()
    assert out[:, :14].max() < 1 and out[:, 18:].min() > 254


def test_grey_png_bytes_decode_to_rgb():
    ok, buf = cv2.imencode(".png", np.full((10, 12), 77, np.uint8))
    image = decode_image(tf.constant(buf.tobytes())).numpy()
    assert image.shape == (10, 12, 3) and np.all(image == 77)


def test_train_transform_is_a_function_of_its_seed():
    img = tf.constant(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    cfg = _cfg()
    a = train_transform(img, cfg, tf.constant([1, 2], tf.int64)).numpy()
    b = train_transform(img, cfg, tf.constant([1, 2], tf.int64)).numpy()
    c = train_transform(img, cfg, tf.constant([1, 3], tf.int64)).numpy()
    assert a.shape == (32, 32, 3) and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_eval_dataset_reads_every_record_once_with_labels(shards):
    lm = read_data_label_map(str(shards))
    n_val = count_examples(str(shards), "validation")
    ds = build_dataset(str(shards), "validation", _cfg(), 3, training=False, with_ids=True)
    ids, labels = [], []
    for images, y, i in ds:
        assert images.dtype == tf.float32 and images.shape[1:] == (32, 32, 3)
        labels += list(y.numpy())
        ids += [v.decode() for v in i.numpy()]
    assert len(ids) == len(set(ids)) == n_val > 0
    assert set(labels) <= set(lm["label"])


def test_training_stream_resumes_at_a_step_with_the_same_batches(shards):
    cfg = _cfg("data.deterministic=true", "data.shuffle_buffer=16")
    full = list(build_dataset(str(shards), "train", cfg, 4, training=True, seed=7).take(6))
    tail = list(build_dataset(str(shards), "train", cfg, 4, training=True, seed=7, start_step=3).take(3))
    for (xa, ya), (xb, yb) in zip(full[3:], tail, strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # A second iterator over the same dataset yields the same stream (Keras may start one just to peek).
    ds = build_dataset(str(shards), "train", cfg, 4, training=True, seed=7)
    next(iter(ds))
    for (xa, ya), (xb, yb) in zip(full, ds.take(6), strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    other = list(build_dataset(str(shards), "train", cfg, 4, training=True, seed=8).take(1))
    assert not np.array_equal(other[0][0].numpy(), full[0][0].numpy())
    assert all(x.shape[0] == 4 for x, _ in full)  # full batches only: replicas get equal shares
