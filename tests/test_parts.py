"""write --max-part-gb / --part and verify of parts: one build as several Kaggle datasets, same bytes as unsplit."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf
from helpers import BUILDER_CLI, REALDATA, kill_mid_run

from landmark_kaggle.clibase import UserError
from landmark_kaggle.data import gld, records
from landmark_kaggle.data.sample import make_sample
from tfrec_builder import manifest as mf
from tfrec_builder.cli import main as tfrec_main
from tfrec_builder.parts import GB, PART_FILL
from tfrec_builder.plan import make_plan
from tfrec_builder.verify import verify_dataset
from tfrec_builder.write import write_dataset

SETTINGS = dict(image_size=56, shard_mb=0.004, val_fraction=0.25, workers=1, progress=False)
CAP = 0.000022  # GB: the sample below in three parts of 15–20 KB, metadata included
SLUG = re.compile(r"^[a-z0-9-]{5,50}$")


def shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if records.parse_shard_name(p.name)}


def folder_files(folder: Path) -> dict[str, bytes]:
    names = list(shard_files(folder)) + ["label_map.csv", "manifest.json", "dataset-metadata.json"]
    return {n: (folder / n).read_bytes() for n in names}


def ids_by_split(folder: Path) -> dict[str, str]:
    got = {}
    for split in records.SPLITS:
        files = records.list_shards(str(folder), split)
        if files:
            for r in tf.data.TFRecordDataset(files).map(records.parse_example).as_numpy_iterator():
                got[r["id"].decode()] = split
    return got


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("gld")
    make_sample(root, num_classes=4, max_per_class=8, image_size=(48, 64))
    noise = pd.read_csv(root / "noise.csv", dtype={"id": str})
    noise[["id", "landmark_id"]].assign(cluster=-1, reason="noise").to_csv(root / "outliers.csv", index=False)
    return root


@pytest.fixture(scope="module")
def unsplit(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("unsplit")
    write_dataset(sample, out, outliers=sample / "outliers.csv", dataset_id="alice/gld-test-56", **SETTINGS)
    return out


@pytest.fixture(scope="module")
def parted(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("parted")
    result = write_dataset(sample, out, outliers=sample / "outliers.csv", dataset_id="alice/gld-test-56",
                           max_part_gb=CAP, **SETTINGS)
    return out, result


def part_dirs(out: Path) -> list[Path]:
    doc = mf.read_json(out / "parts.json")
    return [out / row["folder"] for row in doc["table"]]


def test_a_build_that_fits_is_the_plain_folder(unsplit):
    assert not (unsplit / "parts.json").exists()
    m = mf.read_json(unsplit / "manifest.json")
    assert "parts" not in m and m["balanced"] and m["removed"] > 0
    assert len(shard_files(unsplit)) == len(m["shards"]) >= 6
    assert mf.read_json(unsplit / "dataset-metadata.json")["id"] == "alice/gld-test-56"


def test_parts_are_complete_kaggle_datasets(parted, unsplit):
    out, result = parted
    doc = mf.read_json(out / "parts.json")
    assert doc == result["parts"] and doc["count"] >= 3
    assert sorted(p.name for p in out.iterdir()) == sorted(["parts.json"] + [r["folder"] for r in doc["table"]])
    label_map = (unsplit / "label_map.csv").read_bytes()
    for k, folder in enumerate(part_dirs(out), start=1):
        assert folder.name == f"gld-test-56-part-{k}"
        meta = mf.read_json(folder / "dataset-metadata.json")
        owner, slug = meta["id"].split("/")
        assert (owner, slug) == ("alice", f"gld-test-56-part-{k}") and SLUG.match(slug) and len(slug) >= 6
        assert 6 <= len(meta["title"]) <= 50 and f"part {k} of {doc['count']}" in meta["title"]
        assert len(meta["licenses"]) == 1 and 20 <= len(meta["subtitle"]) <= 80
        assert (folder / "label_map.csv").read_bytes() == label_map
        m = mf.read_json(folder / "manifest.json")
        assert m["parts"] == doc | {"part": k} and m["plan"] == doc["plan"]
        assert sorted(shard_files(folder)) == sorted(doc["table"][k - 1]["shards"])
        assert m["balanced"] and sum(m["written"].values()) + m["removed"] + m["failed"] == m["input"]
        planned = doc["table"][k - 1]["planned_bytes"]
        assert planned <= CAP * GB * PART_FILL
        size = sum((folder / n).stat().st_size for n in ("label_map.csv", "manifest.json", "dataset-metadata.json"))
        assert size + sum(len(b) for b in shard_files(folder).values()) <= CAP * GB


def test_union_of_the_parts_is_the_unsplit_build_byte_for_byte(parted, unsplit):
    out, _ = parted
    union: dict[str, bytes] = {}
    splits_per_part = []
    for folder in part_dirs(out):
        files = shard_files(folder)
        assert not set(files) & set(union)  # every global shard in one part only
        union |= files
        splits_per_part.append({records.parse_shard_name(n)[0] for n in files})
    assert union == shard_files(unsplit)
    # Both splits are spread over the parts, not gathered in one.
    assert sum("validation" in s for s in splits_per_part) >= 2 and all("train" in s for s in splits_per_part)


def test_every_input_id_is_in_exactly_one_part(sample, parted, unsplit):
    out, _ = parted
    doc = mf.read_json(out / "parts.json")
    train = pd.read_csv(sample / "train.csv", dtype={"id": str})
    removed = set(pd.read_csv(sample / "outliers.csv", dtype={"id": str})["id"])
    seen: dict[str, str] = {}
    accounted = []
    for k, folder in enumerate(part_dirs(out), start=1):
        got = ids_by_split(folder)
        assert not set(got) & set(seen)
        seen |= got
        m = mf.read_json(folder / "manifest.json")
        failed = {f["id"] for f in m["failed_images"]}
        # The outliers belong to no shard: part 1's manifest accounts for them.
        assert m["removed"] == (len(removed) if k == 1 else 0)
        accounted += list(got) + list(failed) + (sorted(removed) if k == 1 else [])
    assert sorted(accounted) == sorted(train["id"]) and len(accounted) == doc["input"]
    assert seen == ids_by_split(unsplit)  # the same stratified train/validation split as unsplit


def test_verify_the_parts_together_and_each_alone(parted, tmp_path, capsys):
    out, _ = parted
    assert verify_dataset(out) == []
    for folder in part_dirs(out):
        assert verify_dataset(folder) == []
    assert tfrec_main(["verify", str(out), "--no-progress", "--workers", "1"]) == 0
    said = capsys.readouterr().out
    assert ": OK — all 3 parts of build " in said and "over all parts" in said

    broken = tmp_path / "missing"
    shutil.copytree(out, broken)
    doc = mf.read_json(out / "parts.json")
    shutil.rmtree(broken / doc["table"][1]["folder"])
    assert verify_dataset(broken) == [
        "part 2 of 3 (gld-test-56-part-2, Kaggle dataset alice/gld-test-56-part-2): missing"]
    # Kaggle mounts the parts without parts.json: the manifests' own table still names the missing one.
    (broken / "parts.json").unlink()
    assert verify_dataset(broken) == [
        "part 2 of 3 (gld-test-56-part-2, Kaggle dataset alice/gld-test-56-part-2): missing"]

    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    victim = corrupt / doc["table"][2]["folder"] / doc["table"][2]["shards"][0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    lm = corrupt / doc["table"][1]["folder"] / "label_map.csv"
    lm.write_bytes(lm.read_bytes().replace(b"\n", b"\r\n"))
    problems = verify_dataset(corrupt)
    assert any(p.startswith(f"{doc['table'][2]['folder']}/{victim.name}: sha256 ") for p in problems)
    assert f"{doc['table'][1]['folder']}/label_map.csv: differs from part 1's" in problems
    assert tfrec_main(["verify", str(corrupt), "--no-progress", "--workers", "1"]) == 1


def test_a_part_of_another_build_is_named(sample, parted, tmp_path):
    out, _ = parted
    doc = mf.read_json(out / "parts.json")
    other = tmp_path / "other"
    write_dataset(sample, other, outliers=sample / "outliers.csv", dataset_id="alice/gld-test-56", max_part_gb=CAP,
                  **(SETTINGS | {"val_fraction": 0.3}))
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.rmtree(mixed / doc["table"][0]["folder"])
    shutil.copytree(other / doc["table"][0]["folder"], mixed / doc["table"][0]["folder"])
    problems = verify_dataset(mixed)
    assert problems[0].startswith(f"{doc['table'][0]['folder']}: part 1 of another build (build id ")
    assert "part 1 of 3 (gld-test-56-part-1, Kaggle dataset alice/gld-test-56-part-1): missing" in problems


def test_part_k_writes_that_part_alone_with_the_same_bytes(sample, parted, tmp_path):
    out, _ = parted
    doc = mf.read_json(out / "parts.json")
    one = tmp_path / "one"
    result = write_dataset(sample, one, outliers=sample / "outliers.csv", dataset_id="alice/gld-test-56",
                           max_part_gb=CAP, part=2, **SETTINGS)
    assert [m["parts"]["part"] for m in result["written_parts"]] == [2]
    assert sorted(p.name for p in one.iterdir()) == ["gld-test-56-part-2", "parts.json"]
    assert (one / "parts.json").read_bytes() == (out / "parts.json").read_bytes()
    assert folder_files(one / "gld-test-56-part-2") == folder_files(out / "gld-test-56-part-2")
    assert verify_dataset(one / "gld-test-56-part-2") == []
    assert verify_dataset(one) == [
        f"part {k} of 3 (gld-test-56-part-{k}, Kaggle dataset alice/gld-test-56-part-{k}): missing" for k in (1, 3)]
    with pytest.raises(UserError, match=r"--part 4: this build has 3 part\(s\) at --max-part-gb 2.2e-05"):
        write_dataset(sample, one, dataset_id="alice/gld-test-56", outliers=sample / "outliers.csv",
                      max_part_gb=CAP, part=4, **SETTINGS)
    assert doc["count"] == 3


def test_workers_sharing_a_part_join_it_and_the_owner_comes_from_kaggle_username(sample, parted, tmp_path,
                                                                                  monkeypatch):
    out, _ = parted
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    together = tmp_path / "together"
    kw = dict(outliers=sample / "outliers.csv", max_part_gb=CAP, part=2, num_workers=2, **SETTINGS)
    first = write_dataset(sample, together, worker_index=1, **kw)
    assert not (together / "gldv2-tfrec-56-part-2" / "manifest.json").exists()
    assert "partition" in first["written_parts"][0]
    last = write_dataset(sample, together, worker_index=0, **kw)
    assert last["written_parts"][0]["joined"]
    folder = together / "gldv2-tfrec-56-part-2"
    assert shard_files(folder) == shard_files(out / "gld-test-56-part-2")
    assert mf.read_json(folder / "dataset-metadata.json")["id"] == "bob/gldv2-tfrec-56-part-2"
    assert mf.read_json(folder / "manifest.json")["parts"]["table"][1]["id"] == "bob/gldv2-tfrec-56-part-2"
    assert verify_dataset(folder) == []


def test_layouts_and_splits_are_never_mixed_in_one_folder(sample, parted, unsplit, tmp_path):
    out, _ = parted
    kw = dict(outliers=sample / "outliers.csv", dataset_id="alice/gld-test-56", **SETTINGS)
    with pytest.raises(UserError, match="holds an unsplit build"):
        write_dataset(sample, shutil.copytree(unsplit, tmp_path / "u"), max_part_gb=CAP, **kw)
    with pytest.raises(UserError, match=r"holds the parts of a split build \(parts.json\)"):
        write_dataset(sample, shutil.copytree(out, tmp_path / "p"), **kw)
    with pytest.raises(UserError, match="split another way"):
        write_dataset(sample, shutil.copytree(out, tmp_path / "q"), max_part_gb=0.000015, part=1, **kw)


def test_caps_ids_and_sizes_that_cannot_work_are_user_errors(sample, tmp_path, capsys):
    kw = dict(outliers=sample / "outliers.csv", **SETTINGS)
    with pytest.raises(UserError, match=r"gld-test-56-part-\d holds [\d.]+ KB.*, over --max-part-gb 1.2e-05"):
        write_dataset(sample, tmp_path / "a", dataset_id="alice/gld-test-56", max_part_gb=0.000012, **kw)
    with pytest.raises(UserError, match="lower --shard-mb"):
        write_dataset(sample, tmp_path / "b", max_part_gb=0.000002, **kw)
    with pytest.raises(UserError, match="Kaggle needs 6–50 lowercase letters"):
        write_dataset(sample, tmp_path / "c", dataset_id="alice/Not_A_Slug", **kw)
    with pytest.raises(UserError, match="and the longest part's 'a{45}-part-3' too"):
        write_dataset(sample, tmp_path / "d", dataset_id="alice/" + "a" * 45, max_part_gb=CAP, **kw)
    assert tfrec_main(["write", str(sample), "--out", str(tmp_path / "e"), "--max-part-gb", "0"]) == 2
    assert "--max-part-gb 0.0 must be > 0" in capsys.readouterr().err


def _real_folder(root: Path, copies: int) -> Path:
    rows = []
    for k, src in enumerate(sorted(REALDATA.glob("*.jpg"))):
        for c in range(copies):
            image_id = f"{k:02x}{c:014x}"
            dst = gld.image_path(root, "train", image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            rows.append((image_id, 1000 + k))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    return root


def test_killed_part_resumes_byte_identical(tmp_path):
    data = _real_folder(tmp_path / "gld", copies=30)
    kw = dict(image_size=300, shard_mb=0.3, val_fraction=0.1)
    planned = sum(s.planned_bytes for s in make_plan(data, outliers=None, quality=90, seed=0, **kw).shards)
    cap = planned / 2.5 / GB  # three parts of a dozen shards
    clean = tmp_path / "clean"
    write_dataset(data, clean, max_part_gb=cap, part=2, workers=1, progress=False, **kw)
    part2 = mf.read_json(clean / "parts.json")["table"][1]["folder"]
    total = len(shard_files(clean / part2))
    assert total >= 8
    out = tmp_path / "killed"
    cmd = [*BUILDER_CLI, "write", str(data), "--out", str(out), "--image-size", "300",
           "--shard-mb", "0.3", "--val-fraction", "0.1", "--max-part-gb", repr(cap), "--part", "2", "--workers", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_mid_run(proc, lambda: len(list((out / part2).glob("*.tfrec"))), lambda n: n >= 2, timeout=120)
    done = {p.name: p.stat().st_mtime_ns for p in (out / part2).glob("*.tfrec")}
    assert 2 <= len(done) < total, "the kill should land mid-part"
    assert not (out / part2 / "manifest.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "part 2/3: wrote " in rerun.stdout and f"({len(done)} already done)" in rerun.stdout
    assert folder_files(out / part2) == folder_files(clean / part2)
    assert (out / "parts.json").read_bytes() == (clean / "parts.json").read_bytes()
    assert {n: (out / part2 / n).stat().st_mtime_ns for n in done} == done
    assert verify_dataset(out / part2) == []
    assert json.loads((out / part2 / "manifest.json").read_text())["parts"]["count"] == 3
