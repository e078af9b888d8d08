"""The record schema: encode → parse round trip, determinism, DELF-compatible keys, shard names."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from landmark_kaggle.data import records


def _jpeg(h=24, w=40, seed=0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _example(**kw):
    args = dict(image_bytes=_jpeg(), image_id="0123456789abcdef", label=3, landmark_id=20409, height=24, width=40)
    args.update(kw)
    return records.encode_example(**args)


def test_round_trip_through_tf_data():
    data = _jpeg()
    ds = tf.data.Dataset.from_tensor_slices([_example(image_bytes=data)]).map(records.parse_example)
    got = next(iter(ds))
    assert got["image"].numpy() == data
    assert got["id"].numpy() == b"0123456789abcdef"
    assert int(got["label"]) == 3 and int(got["landmark_id"]) == 20409
    assert (int(got["height"]), int(got["width"])) == (24, 40)
    assert tuple(tf.io.decode_jpeg(got["image"]).shape) == (24, 40, 3)


def test_plain_protobuf_sees_delf_keys():
    ex = tf.train.Example.FromString(_example())
    f = ex.features.feature
    assert f["image/format"].bytes_list.value[0] == b"JPEG"
    assert f["image/colorspace"].bytes_list.value[0] == b"RGB"
    assert f["image/channels"].int64_list.value[0] == 3
    assert f["image/filename"].bytes_list.value[0] == f["image/id"].bytes_list.value[0]
    assert f["image/class/label"].int64_list.value[0] == 3
    assert f["image/class/landmark_id"].int64_list.value[0] == 20409


def _reference(image_bytes, image_id, label, landmark_id, height, width, channels=3):
    """The same record built by the protobuf library itself."""
    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    ident = image_id.encode()
    feature = {"image/encoded": b(image_bytes), "image/id": b(ident), "image/filename": b(ident),
               "image/class/label": i(label), "image/class/landmark_id": i(landmark_id), "image/height": i(height),
               "image/width": i(width), "image/channels": i(channels), "image/format": b(b"JPEG"),
               "image/colorspace": b(b"RGB")}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.mark.parametrize("label,landmark_id,size", [(0, 0, 0), (3, 20409, 1), (81312, 203093, 127), (-1, -1, 128),
                                                    (2**40, 2**62, 300), (1, 1, 200_000)])
def test_encoder_matches_protobuf_library_byte_for_byte(label, landmark_id, size):
    image = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    args = dict(image_bytes=image, image_id="fedcba9876543210", label=label, landmark_id=landmark_id,
                height=size, width=size + 1)
    ours = records.encode_example(**args)
    assert ours == _reference(**args)
    assert tf.train.Example.FromString(ours).features.feature["image/encoded"].bytes_list.value[0] == image


def test_encoding_is_deterministic_and_value_sensitive():
    assert _example() == _example()
    assert _example() != _example(label=4)


def test_reader_accepts_records_without_landmark_id():
    # A DELF-built record has no image/class/landmark_id: our parser gives -1, not an error.
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_jpeg()])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
    }
    ser = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    got = records.parse_example(tf.constant(ser))
    assert int(got["label"]) == 7 and int(got["landmark_id"]) == -1


def test_shard_names(tmp_path):
    assert records.shard_name("train", 3, 12) == "train-00003-of-00012.tfrec"
    assert records.parse_shard_name("/x/validation-00000-of-00002.tfrec") == ("validation", 0, 2)
    assert records.parse_shard_name("train-1-of-2.tfrec") is None
    with pytest.raises(ValueError):
        records.shard_name("train", 2, 2)
    for name in ["train-00001-of-00002.tfrec", "train-00000-of-00002.tfrec", "validation-00000-of-00001.tfrec",
                 "train-00000-of-00002.tfrec.tmp", "trainx-00000-of-00001.tfrec"]:
        (tmp_path / name).write_bytes(b"")
    got = [p.rsplit("/", 1)[-1] for p in records.list_shards(str(tmp_path), "train")]
    assert got == ["train-00000-of-00002.tfrec", "train-00001-of-00002.tfrec"]
