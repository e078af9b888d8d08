"""The Python TFRecord writer: the same bytes as TensorFlow's writer, readable by TensorFlow, hashed as written."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from tfrec_builder.tfrecord import RecordWriter, masked_crc32c


def test_masked_crc32c_matches_the_published_check_value():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value); masked by hand:
    # rotate right 15 -> 0x2507C60D, + 0xA282EAD8 -> 0xC78AB0E5.
    assert masked_crc32c(b"123456789") == 0xC78AB0E5


@pytest.fixture()
def records():
    rng = np.random.default_rng(0)
    sizes = [0, 1, 7, 8, 255, 4096, 65_537, 300_000]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def test_writer_gives_tensorflows_bytes_and_hashes_what_it_wrote(tmp_path, records):
    ours, theirs = tmp_path / "ours.tfrec", tmp_path / "tf.tfrec"
    with RecordWriter(ours) as writer:
        for r in records:
            writer.write(r)
    with tf.io.TFRecordWriter(str(theirs)) as tfw:
        for r in records:
            tfw.write(r)
    data = ours.read_bytes()
    assert data == theirs.read_bytes()
    assert writer.bytes == len(data) == sum(len(r) + 16 for r in records)
    assert writer.count == len(records)
    assert writer.sha256 == hashlib.sha256(data).hexdigest()


def test_tensorflow_reads_back_every_record_and_sees_a_flipped_byte(tmp_path, records):
    path = tmp_path / "x.tfrec"
    with RecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    assert [t.numpy() for t in tf.data.TFRecordDataset(str(path))] == records
    broken = bytearray(path.read_bytes())
    broken[16 + 2] ^= 0x01  # inside the second record's header: its length CRC no longer holds
    path.write_bytes(bytes(broken))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))


def test_a_record_written_in_parts_is_the_record_written_whole(tmp_path, records):
    whole, parts = tmp_path / "whole.tfrec", tmp_path / "parts.tfrec"
    with RecordWriter(whole) as a, RecordWriter(parts) as b:
        for r in records:
            a.write(r)
            cut1, cut2 = len(r) // 3, 2 * len(r) // 3
            b.write((r[:cut1], r[cut1:cut2], r[cut2:]))
    assert whole.read_bytes() == parts.read_bytes()
    assert a.sha256 == b.sha256 and a.bytes == b.bytes
