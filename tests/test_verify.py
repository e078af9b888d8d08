"""tfrec-builder verify: a sound folder passes; each kind of damage is found and named by shard and record."""

import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from landmark_kaggle.data import gld, records
from landmark_kaggle.data.sample import make_sample
from landmark_kaggle.fileio import file_sha256
from tfrec_builder import manifest as mf
from tfrec_builder.cli import main as tfrec_main
from tfrec_builder.verify import verify_dataset
from tfrec_builder.write import write_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = tmp_path_factory.mktemp("gld")
    make_sample(data, num_classes=3, max_per_class=6, image_size=(40, 56))
    out = tmp_path_factory.mktemp("tfrec")
    write_dataset(data, out, image_size=48, shard_mb=0.004, val_fraction=0.2, workers=1, progress=False)
    return out


@pytest.fixture
def copy(built, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(built, out)
    return out


def _manifest(out):
    return mf.read_json(out / "manifest.json")


def _save_manifest(out, m):
    (out / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")


def _rewrite_shard(out, entry, examples):
    """Replace a shard with these serialized records and make the manifest agree on count, bytes and sha256."""
    path = out / entry["file"]
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex)
    m = _manifest(out)
    for e in m["shards"]:
        if e["file"] == entry["file"]:
            e.update(count=len(examples), bytes=path.stat().st_size, sha256=file_sha256(path))
    _save_manifest(out, m)


def _jpeg(h, w):
    return cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))[1].tobytes()


def test_sound_folder_passes_and_cli_says_ok(built, capsys):
    assert verify_dataset(built) == []
    assert verify_dataset(built, workers=2) == []
    assert tfrec_main(["verify", str(built), "--no-progress", "--workers", "1"]) == 0
    assert ": OK — " in capsys.readouterr().out


def test_bad_records_are_named(copy):
    m = _manifest(copy)
    first, second = m["shards"][0], m["shards"][1]
    other_id = next(iter(tf.data.TFRecordDataset(str(copy / second["file"])).map(records.parse_example)
                         .as_numpy_iterator()))["id"].decode()
    landmark_of_1 = int(gld.read_label_map(copy / "label_map.csv")["landmark_id"][1])
    ok = dict(image_bytes=_jpeg(20, 30), label=1, landmark_id=landmark_of_1, height=20, width=30)
    bad = [
        records.encode_example(image_id="aaaaaaaaaaaaaaa1", **ok),
        records.encode_example(image_id="aaaaaaaaaaaaaaa2", **(ok | {"label": 7})),
        records.encode_example(image_id="aaaaaaaaaaaaaaa3", **(ok | {"landmark_id": 12345})),
        records.encode_example(image_id="aaaaaaaaaaaaaaa4", **(ok | {"image_bytes": b"\xff\xd8junk"})),
        records.encode_example(image_id="aaaaaaaaaaaaaaa5", **(ok | {"height": 21})),
        records.encode_example(image_id="NOT-AN-ID", **ok),
        records.encode_example(image_id=other_id, **ok),
    ]
    _rewrite_shard(copy, first, bad)
    m = _manifest(copy)
    m["written"][first["split"]] += len(bad) - first["count"]
    m["input"] += len(bad) - first["count"]
    _save_manifest(copy, m)
    name = first["file"]
    problems = verify_dataset(copy)
    assert problems[:5] == [
        f"{name}: record 2 (id aaaaaaaaaaaaaaa2): label 7 is not in label_map.csv (0..2)",
        f"{name}: record 3 (id aaaaaaaaaaaaaaa3): landmark_id 12345 but label_map.csv maps label 1 to {landmark_of_1}",
        f"{name}: record 4 (id aaaaaaaaaaaaaaa4): image does not decode"
        + problems[2].split("image does not decode")[1],
        f"{name}: record 5 (id aaaaaaaaaaaaaaa5): decodes to 20x30 (HxW) but records 21x30",
        f"{name}: record 6: image/id 'NOT-AN-ID' is not 16 lowercase hex characters",
    ]
    assert problems[2].startswith(f"{name}: record 4 (id aaaaaaaaaaaaaaa4): image does not decode (")
    assert problems[5:] == [f"id {other_id}: appears in 2 records"]


def test_damaged_and_missing_and_extra_shards(copy):
    m = _manifest(copy)
    a, b, c = m["shards"][0], m["shards"][1], m["shards"][2]
    data = bytearray((copy / a["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record: its CRC no longer matches
    (copy / a["file"]).write_bytes(bytes(data))
    (copy / b["file"]).write_bytes((copy / b["file"]).read_bytes()[: b["bytes"] // 2])
    (copy / c["file"]).unlink()
    (copy / "train-00099-of-00100.tfrec").write_bytes(b"")
    problems = verify_dataset(copy)
    assert "train-00099-of-00100.tfrec: shard file not listed in manifest.json" in problems
    assert f"{c['file']}: listed in manifest.json but missing" in problems
    assert any(p.startswith(f"{a['file']}: sha256 ") for p in problems)
    assert any(p.startswith(f"{a['file']}: unreadable after record ") and "DataLoss" in p for p in problems)
    assert f"{b['file']}: {b['bytes'] // 2} bytes, manifest.json says {b['bytes']}" in problems
    assert any(p.startswith(f"{b['file']}: ") and "records, manifest.json says" in p for p in problems)


def test_manifest_accounting_and_label_map(copy, capsys):
    m = _manifest(copy)
    m["input"] += 1
    m["failed_images"] = [{"id": m["failed_images"][0]["id"]}] if m["failed_images"] else []
    _save_manifest(copy, m)
    lines = (copy / "label_map.csv").read_text().splitlines()
    (copy / "label_map.csv").write_text("\n".join(lines[:-1]) + "\n")
    problems = verify_dataset(copy)
    w = sum(m["written"].values())
    assert (f"manifest.json: written {w} + removed 0 + failed 0 = {w}, but input is {w + 1}") in problems
    assert "label_map.csv: 2 classes, manifest.json says 3" in problems
    assert any("label 2 is not in label_map.csv (0..1)" in p for p in problems)
    assert tfrec_main(["verify", str(copy), "--no-progress", "--workers", "1", "--show", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[-1] == f"{copy}: {len(problems)} problem(s) ({len(problems) - 2} not shown)"


def test_failed_id_found_in_a_shard_and_missing_manifest(copy):
    m = _manifest(copy)
    got = next(iter(tf.data.TFRecordDataset(str(copy / m["shards"][0]["file"])).map(records.parse_example)
                    .as_numpy_iterator()))
    image_id = got["id"].decode()
    m["failed_images"] = [{"id": image_id, "reason": "missing file"}]
    m["failed"] = 1
    m["input"] += 1
    _save_manifest(copy, m)
    assert verify_dataset(copy) == [f"id {image_id}: listed as failed in manifest.json but present in a shard"]
    (copy / "manifest.json").unlink()
    assert verify_dataset(copy)[0].endswith("manifest.json: missing (an unfinished or partitioned build? "
                                            "run write again, or merge)")
