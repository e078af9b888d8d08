"""tfrec-builder write: round trip, split, outliers, partitioned workers, kill-and-resume, every bad input."""

import io
import shutil
import struct
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers import BUILDER_CLI, REALDATA, kill_mid_run, real_folder, run_cli
from PIL import Image

from landmark_kaggle.data import gld, records
from landmark_kaggle.errors import UserError
from tfrec_builder import manifest as mf
from tfrec_builder.cli import main as tfrec_main
from tfrec_builder.merge import merge_parts
from tfrec_builder.plan import split_validation
from tfrec_builder.verify import verify_dataset
from tfrec_builder.write import write_dataset

REAL = REALDATA
COMPARED = ("label_map.csv", "manifest.json", "dataset-metadata.json")


def read_shards(out: Path) -> dict[str, dict]:
    """Every record of every shard, parsed with our reader, keyed by id."""
    got = {}
    for split in records.SPLITS:
        files = records.list_shards(str(out), split)
        if not files:
            continue
        for r in tf.data.TFRecordDataset(files).map(records.parse_example).as_numpy_iterator():
            got[r["id"].decode()] = r | {"split": split}
    return got


def output_files(out: Path) -> dict[str, bytes]:
    """The files a byte-identical build must reproduce: every shard plus the three metadata files."""
    names = sorted(p.name for p in out.iterdir() if records.parse_shard_name(p.name)) + list(COMPARED)
    return {n: (out / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfrec")
    manifest = write_dataset(sample, out, image_size=56, shard_mb=0.004, val_fraction=0.25, workers=1,
                             progress=False)
    return out, manifest


def test_round_trip_bytes_labels_ids(sample, built):
    out, manifest = built
    index = gld.load_train_index(sample)
    got = read_shards(out)
    assert sorted(got) == sorted(index.frame["id"])
    label_map = gld.read_label_map(out / "label_map.csv")
    assert label_map["landmark_id"].tolist() == sorted(index.frame["landmark_id"].unique())
    by_id = index.frame.set_index("id")
    copied = 0
    for image_id, r in got.items():
        src = Path(by_id.loc[image_id, "path"]).read_bytes()
        assert r["landmark_id"] == by_id.loc[image_id, "landmark_id"]
        assert label_map["landmark_id"][r["label"]] == r["landmark_id"]
        pixels = tf.io.decode_jpeg(r["image"]).numpy()
        assert pixels.shape == (r["height"], r["width"], 3)
        assert max(pixels.shape[:2]) <= 56
        src_shape = cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        if max(src_shape) <= 56:
            assert r["image"] == src  # fits and is baseline RGB: stored untouched
            copied += 1
        else:
            assert max(pixels.shape[:2]) == 56  # shrunk to the long side, aspect kept within a pixel
            assert abs(pixels.shape[0] / pixels.shape[1] - src_shape[0] / src_shape[1]) < 0.05
    assert 0 < copied < len(got)
    assert manifest["actions"]["copied"] == copied
    assert manifest["written"]["train"] + manifest["written"]["validation"] == manifest["input"] == len(index)
    assert manifest["balanced"] and manifest["failed"] == 0
    assert "finished" not in (out / "manifest.json").read_text()  # run times live in .build/runs.jsonl
    # What `kaggle datasets create -p DIR` checks before uploading.
    meta = mf.read_json(out / "dataset-metadata.json")
    owner, slug = meta["id"].split("/")
    assert 6 <= len(slug) <= 50 and 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1
    assert 20 <= len(meta["subtitle"]) <= 80


def test_shards_parse_with_plain_protobuf_and_delf_spec(built):
    out, manifest = built
    # TFRecord framing read by hand (length, crc, data, crc), then tf.train.Example: no tf.data involved.
    delf_spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                 "image/filename": tf.io.FixedLenFeature([], tf.string),
                 "image/class/label": tf.io.FixedLenFeature([], tf.int64),
                 "image/height": tf.io.FixedLenFeature([], tf.int64),
                 "image/width": tf.io.FixedLenFeature([], tf.int64),
                 "image/channels": tf.io.FixedLenFeature([], tf.int64),
                 "image/format": tf.io.FixedLenFeature([], tf.string)}
    total = 0
    for entry in manifest["shards"]:
        data, pos, n = (out / entry["file"]).read_bytes(), 0, 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            ex = tf.train.Example.FromString(data[pos + 12:pos + 12 + length])
            pos += 16 + length
            n += 1
            f = ex.features.feature
            assert f["image/id"].bytes_list.value == f["image/filename"].bytes_list.value
            assert f["image/format"].bytes_list.value[0] == b"JPEG"
            parsed = tf.io.parse_single_example(ex.SerializeToString(), delf_spec)
            assert int(parsed["image/channels"]) == 3
        assert n == entry["count"]
        total += n
    assert total == sum(manifest["written"].values())


def test_split_is_stratified_and_hand_computed():
    labels = np.array([0] * 1 + [1] * 2 + [2] * 4 + [3] * 10)
    mask = split_validation(labels, 0.25, seed=0)
    # round-half-even of n·f, capped at n-1: 1→0, 2→0 (0.5), 4→1, 10→2 (2.5)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [0, 0, 1, 2]
    assert (split_validation(labels, 0.25, seed=0) == mask).all()
    assert [int(m[labels == c].sum()) for m in [split_validation(labels, 0.9, 1)] for c in range(4)] == [0, 1, 3, 9]
    seeds = {tuple(split_validation(labels, 0.25, s)) for s in range(5)}
    assert len(seeds) > 1


def test_every_class_keeps_training_images_and_shards_mix_classes(built):
    out, manifest = built
    got = read_shards(out)
    train_labels = {r["label"] for r in got.values() if r["split"] == "train"}
    assert train_labels == set(range(manifest["num_classes"]))
    assert manifest["written"]["validation"] > 0
    assert manifest["classes_without_train_images"] == []
    classes_per_shard = []
    for entry in manifest["shards"]:
        ds = tf.data.TFRecordDataset(str(out / entry["file"])).map(records.parse_example)
        classes_per_shard.append(len({int(r["label"]) for r in ds.as_numpy_iterator()}))
    assert len(manifest["shards"]) >= 4 and max(classes_per_shard) >= 2


def test_outliers_are_removed_and_counted(sample, tmp_path):
    noise = pd.read_csv(sample / "noise.csv", dtype={"id": str})
    train = pd.read_csv(sample / "train.csv", dtype={"id": str})
    extra = train[~train["id"].isin(noise["id"])].iloc[:2]
    outl = pd.concat([noise[["id", "landmark_id"]], extra[["id", "landmark_id"]]])
    outl = outl.assign(cluster=-1, reason=["noise"] * len(noise) + ["small-cluster"] * len(extra))
    outl.to_csv(tmp_path / "outliers.csv", index=False)
    m = write_dataset(sample, tmp_path / "out", outliers=tmp_path / "outliers.csv", image_size=56, shard_mb=1,
                      val_fraction=0.25, workers=1, progress=False)
    got = read_shards(tmp_path / "out")
    assert m["removed"] == len(outl) and not set(outl["id"]) & set(got)
    assert m["removed_by_reason"] == {"noise": len(noise), "small-cluster": 2}
    assert sum(m["written"].values()) + m["removed"] + m["failed"] == m["input"] == len(train)
    bad = outl.copy()
    bad.iloc[1, 0] = "ffffffffffffffff"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"bad\.csv: line 3: id ffffffffffffffff is not in the training index"):
        write_dataset(sample, tmp_path / "out2", outliers=tmp_path / "bad.csv", workers=1, progress=False)


def test_header_only_outliers_file_removes_nothing(sample, tmp_path):
    # clean writes just the header when it finds no outlier; that is a valid, empty list.
    (tmp_path / "outliers.csv").write_text("id,landmark_id,cluster,reason\n")
    m = write_dataset(sample, tmp_path / "out", outliers=tmp_path / "outliers.csv", image_size=56, shard_mb=1,
                      val_fraction=0.25, workers=1, progress=False)
    assert m["removed"] == 0 and sum(m["written"].values()) + m["failed"] == m["input"]


def test_partitioned_workers_equal_one_worker(sample, built, tmp_path):
    out, _ = built
    kw = dict(image_size=56, shard_mb=0.004, val_fraction=0.25, workers=1, progress=False)
    for i in range(3):
        write_dataset(sample, tmp_path / f"w{i}", worker_index=i, num_workers=3, **kw)
    assert not (tmp_path / "w0" / "manifest.json").exists()
    merge_parts([tmp_path / f"w{i}" for i in range(3)], tmp_path / "joined")
    assert output_files(tmp_path / "joined") == output_files(out)
    # Workers sharing one folder: the last to finish joins the parts itself.
    write_dataset(sample, tmp_path / "together", worker_index=1, num_workers=2, **kw)
    assert not (tmp_path / "together" / "manifest.json").exists()
    write_dataset(sample, tmp_path / "together", worker_index=0, num_workers=2, **kw)
    assert output_files(tmp_path / "together") == output_files(out)
    with pytest.raises(UserError, match="missing part"):
        merge_parts([tmp_path / "w0", tmp_path / "w2"], tmp_path / "incomplete")


def test_two_worker_processes_write_the_same_bytes_as_one(sample, built, tmp_path):
    write_dataset(sample, tmp_path / "o", image_size=56, shard_mb=0.004, val_fraction=0.25, workers=2,
                  progress=False)
    assert output_files(tmp_path / "o") == output_files(built[0])
    runs = (tmp_path / "o" / ".build" / "runs.jsonl").read_text()
    assert '"workers": 2' in runs


def test_changed_settings_into_an_existing_folder_is_refused(sample, built, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(built[0], out)
    with pytest.raises(UserError, match="different inputs or settings"):
        write_dataset(sample, out, image_size=48, shard_mb=0.004, val_fraction=0.25, workers=1, progress=False)


def test_resume_after_a_kill_between_state_and_rename(sample, built, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(built[0], out)
    name = built[1]["shards"][2]["file"]
    (out / name).unlink()  # state saved, shard not yet renamed: the narrowest kill window
    (out / "manifest.json").unlink()
    junk = mf.build_dir(out) / "tmp" / f"{built[1]['shards'][3]['file']}.999.tmp"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"half a shard")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrec")}
    write_dataset(sample, out, image_size=56, shard_mb=0.004, val_fraction=0.25, workers=1, progress=False)
    assert output_files(out) == output_files(built[0])
    assert {p: out.joinpath(p).stat().st_mtime_ns for p in before} == before


def test_killed_write_subprocess_resumes_byte_identical(tmp_path):
    data = real_folder(tmp_path / "gld", copies=30)
    args = ["--image-size", "300", "--shard-mb", "0.3", "--val-fraction", "0.1", "--workers", "1", "--no-progress"]
    clean = tmp_path / "clean"
    write_dataset(data, clean, image_size=300, shard_mb=0.3, val_fraction=0.1, workers=1, progress=False)
    total = len(list(clean.glob("*.tfrec")))
    assert total >= 10
    out = tmp_path / "killed"
    cmd = [*BUILDER_CLI, "write", str(data), "--out", str(out), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_mid_run(proc, lambda: len(list(out.glob("*.tfrec"))), lambda n: n >= 2, timeout=120)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrec")}
    assert 2 <= len(done) < total, "the kill should land mid-build"
    assert not (out / "manifest.json").exists()
    for name in done:  # whatever is under a final name is whole: same bytes as the clean build
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    rerun = run_cli("write", data, "--out", out, *args, builder=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({len(done)} already done)" in rerun.stdout
    assert output_files(out) == output_files(clean)
    assert {n: (out / n).stat().st_mtime_ns for n in done} == done
    assert verify_dataset(out) == []


def _huge_jpeg(h: int, w: int) -> bytes:
    """A valid baseline 3-component JPEG of h×w uniform grey, a few MB: every 8×8 block is 'DC 0, EOB'."""
    def seg(marker, payload):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload
    dqt = seg(0xDB, b"\x00" + b"\x01" * 64)
    sof = seg(0xC0, struct.pack(">BHHB", 8, h, w, 3) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3)))
    # One DC code (category 0) and one AC code (EOB), both the 1-bit code '0'.
    dht = seg(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00" + b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    sos = seg(0xDA, b"\x03" + b"".join(bytes([c, 0x00]) for c in (1, 2, 3)) + b"\x00\x3f\x00")
    blocks = ((h + 7) // 8) * ((w + 7) // 8) * 3
    return b"\xff\xd8" + dqt + sof + dht + sos + bytes((blocks * 2 + 7) // 8) + b"\xff\xd9"


def _bad_inputs() -> dict[str, bytes | None]:
    rng = np.random.default_rng(3)
    photo = cv2.imread(str(sorted(REAL.glob("*.jpg"))[0]))
    small = cv2.resize(photo, (60, 40), interpolation=cv2.INTER_AREA)
    good = cv2.imencode(".jpg", small)[1].tobytes()
    cmyk = io.BytesIO()
    Image.new("CMYK", (50, 30), (0, 255, 255, 0)).save(cmyk, "JPEG")  # pure red
    prog = io.BytesIO()
    Image.fromarray(small[:, :, ::-1]).save(prog, "JPEG", progressive=True)
    header = bytearray(good)
    header[2:40] = rng.integers(0, 255, 38, dtype=np.uint8).tobytes()
    return {
        "good": good,
        "missing": None,
        "truncated": good[: len(good) // 2],
        "random_bytes": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "corrupt_header": bytes(header),
        "png": cv2.imencode(".png", small)[1].tobytes(),
        "cmyk": cmyk.getvalue(),
        "grey": cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))[1].tobytes(),
        "progressive": prog.getvalue(),
        "zero_bytes": b"",
        "huge": _huge_jpeg(20000, 20000),
    }


def test_every_bad_input_is_converted_or_failed_with_its_reason(tmp_path):
    data = tmp_path / "gld"
    ids = {}
    for k, (kind, content) in enumerate(_bad_inputs().items()):
        ids[kind] = f"{k:016x}"
        if content is not None:
            path = gld.image_path(data, "train", ids[kind])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    pd.DataFrame({"id": list(ids.values()), "landmark_id": 5}).to_csv(data / "train.csv", index=False)
    code = tfrec_main(["write", str(data), "--out", str(tmp_path / "out"), "--image-size", "64", "--workers", "1",
                       "--val-fraction", "0", "--no-progress"])
    assert code == 0
    m = mf.read_json(tmp_path / "out" / "manifest.json")
    reasons = {f["id"]: f["reason"] for f in m["failed_images"]}
    assert reasons == {
        ids["missing"]: "missing file",
        ids["truncated"]: "truncated JPEG (no end-of-image marker)",
        ids["random_bytes"]: "not an image (unrecognised bytes)",
        ids["corrupt_header"]: "corrupt JPEG header (no marker at byte 2)",
        ids["zero_bytes"]: "empty file (0 bytes)",
    }
    assert m["written"]["train"] + m["failed"] == m["input"] == len(ids) and m["balanced"]
    got = read_shards(tmp_path / "out")
    assert set(got) == {ids[k] for k in ("good", "png", "cmyk", "grey", "progressive", "huge")}
    assert got[ids["good"]]["image"] == _bad_inputs()["good"]
    for kind in ("png", "cmyk", "grey", "progressive", "huge"):
        r = got[ids[kind]]
        assert r["image"][:2] == b"\xff\xd8" and r["image"][-2:] == b"\xff\xd9"
        pixels = tf.io.decode_jpeg(r["image"]).numpy()
        assert pixels.shape == (r["height"], r["width"], 3)
    assert (got[ids["huge"]]["height"], got[ids["huge"]]["width"]) == (64, 64)
    red = tf.io.decode_jpeg(got[ids["cmyk"]]["image"]).numpy()[15, 25]
    assert red[0] > 200 and red[1] < 40 and red[2] < 40
    grey = tf.io.decode_jpeg(got[ids["grey"]]["image"]).numpy().astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 3
    assert verify_dataset(tmp_path / "out") == []


def test_bad_settings_are_user_errors(sample, tmp_path, capsys):
    assert tfrec_main(["write", str(sample), "--out", str(tmp_path / "o"), "--quality", "0"]) == 2
    assert "--quality 0 must be in 1..100" in capsys.readouterr().err
    assert tfrec_main(["write", str(sample), "--out", str(tmp_path / "o"), "--worker-index", "2",
                       "--num-workers", "2"]) == 2
    assert "--worker-index 2 must be in 0..--num-workers-1 (2)" in capsys.readouterr().err
    assert tfrec_main(["write", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing: data folder not found" in capsys.readouterr().err
    assert tfrec_main(["write", str(sample), "--out", str(tmp_path / "o"), "--outliers", str(tmp_path / "no.csv")]) == 2
    assert "no.csv: outliers file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_read_ahead_yields_every_file_once_in_order(tmp_path):
    from tfrec_builder.images import ImageError
    from tfrec_builder.shard import read_ahead

    paths = []
    for k in range(23):
        p = tmp_path / f"{k}.bin"
        if k != 5:  # one missing file: its error comes back in its place
            p.write_bytes(bytes([k]) * (k + 1))
        paths.append(str(p))
    for window in (0, 1, 4, 23, 100):
        got = list(read_ahead(paths, window))
        assert len(got) == 23
        assert isinstance(got[5], ImageError) and str(got[5]) == "missing file"
        assert [g for k, g in enumerate(got) if k != 5] == [bytes([k]) * (k + 1) for k in range(23) if k != 5]
