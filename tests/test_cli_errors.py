"""Each error path of the two command lines, run as a user runs them: exit code 2, one line on stderr that
names the input at fault, and nothing written or deleted (the folders involved hold the same files, byte for
byte, before and after)."""

import re
import shutil

import pytest
from helpers import run_cli

from landmark_kaggle.errors import UserError


def files(*roots) -> dict:
    """Every file and folder under ``roots`` (path -> bytes, None for a folder): what a refused run must keep."""
    return {p: (None if p.is_dir() else p.read_bytes()) for root in roots for p in [root, *root.rglob("*")]
            if p.exists()}


def refused(proc, *names) -> str:
    """The run ended with exit code 2 and a one-line message naming each of ``names``; returns the message."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # (TensorFlow's own log lines may come before it: "failed call to cuInit" on a machine without a GPU.)
    lines = [ln for ln in proc.stderr.splitlines() if re.match(r"(landmark-kaggle|tfrec-builder) [a-z-]+: error: ", ln)]
    assert len(lines) == 1, proc.stderr[-3000:]
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def earlier_run(sample, tmp_path_factory):
    """A folder as an earlier dry-run leaves it: its marker, a report, and the sample it made in ``data/``."""
    out = tmp_path_factory.mktemp("earlier") / "dry"
    shutil.copytree(sample, out / "data")
    (out / "dryrun.json").write_text('{"quick": true, "data": null}\n')
    (out / "report.json").write_text("{}\n")
    return out


# -- dry-run ----------------------------------------------------------------------------------------------------------

def test_dry_run_out_that_is_not_a_dry_run_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine, not a dry-run's")
    (tmp_path / "a-file").write_text("not a folder")
    before = files(tmp_path)
    assert "is not a dry-run folder" in refused(run_cli("dry-run", "--quick", "--out", mine), mine)
    assert "is not a folder" in refused(run_cli("dry-run", "--quick", "--out", tmp_path / "a-file"),
                                        tmp_path / "a-file")
    assert files(tmp_path) == before


def test_dry_run_data_inside_the_earlier_run_it_would_empty(earlier_run):
    before = files(earlier_run)
    data = earlier_run / "data"
    message = refused(run_cli("dry-run", "--quick", "--data", data, "--out", earlier_run), data, earlier_run)
    assert "lies inside --out" in message
    assert files(earlier_run) == before


def test_dry_run_data_without_solution_csv(earlier_run, sample, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(sample / "train.csv", data / "train.csv")
    before = files(earlier_run, data)
    for out in (earlier_run, tmp_path / "new"):  # neither the earlier run emptied nor a new folder made
        assert "no solution.csv" in refused(run_cli("dry-run", "--quick", "--data", data, "--out", out), data)
    assert files(earlier_run, data) == before and not (tmp_path / "new").exists()


# -- subset -----------------------------------------------------------------------------------------------------------

def test_subset_into_a_folder_that_is_not_empty(sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("not a folder")
    before = files(tmp_path, sample)
    for target in (out, tmp_path / "a-file"):
        message = refused(run_cli("subset", sample, target, "--classes", "2", "--max-per-class", "2"), target)
        assert "not an empty folder" in message
    assert files(tmp_path, sample) == before


# -- tfrec-builder merge ----------------------------------------------------------------------------------------------

def test_merge_without_every_workers_part(sample, tmp_path):
    from tfrec_builder.write import write_dataset

    for i in (0, 2):
        write_dataset(sample, tmp_path / f"w{i}", worker_index=i, num_workers=3, image_size=56, shard_mb=0.004,
                      val_fraction=0.25, workers=1, progress=False)
    (tmp_path / "empty").mkdir()
    before = files(tmp_path)
    w0, w2, joined = tmp_path / "w0", tmp_path / "w2", tmp_path / "joined"
    message = refused(run_cli("merge", w0, w2, "--out", joined, builder=True), w0, w2)
    assert "missing part(s) of worker(s) 1 of 3" in message
    assert "folder not found" in refused(run_cli("merge", tmp_path / "nowhere", builder=True), tmp_path / "nowhere")
    message = refused(run_cli("merge", tmp_path / "empty", "--out", joined, builder=True), tmp_path / "empty")
    assert "no .build/manifest-part-*.json" in message
    assert files(tmp_path) == before


# -- embed-index ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model folder with random weights (MobileNetV3Small, 32 px): enough to be loaded."""
    import numpy as np

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.data.gld import make_label_map
    from landmark_kaggle.model.network import build_model, save_model_dir

    cfg = config_from_dict({"data": {"image_size": 32}, "model": {"backbone": "MobileNetV3Small", "embedding_dim": 8,
                                                                  "weights": "none"}})
    return save_model_dir(build_model(cfg, 2), cfg, make_label_map(np.array([5, 9])),
                          tmp_path_factory.mktemp("tiny") / "model")


def test_embed_index_takes_exactly_one_of_data_and_images(shards, tmp_path):
    from landmark_kaggle.infer.embed_index import build_index

    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "index"
    before = files(tmp_path, shards)
    both = refused(run_cli("embed-index", "--model", tmp_path / "model", "--data", shards, "--images", images,
                           "--out", out), "--images", "--data")
    assert "not allowed with" in both
    neither = refused(run_cli("embed-index", "--model", tmp_path / "model", "--out", out), "--data", "--images")
    assert "is required" in neither
    # The library says so too, before it loads any model.
    with pytest.raises(UserError, match="exactly one of --data TFREC_DIR or --images DIR"):
        build_index(tmp_path / "model", out)
    assert files(tmp_path, shards) == before


def test_embed_index_with_nothing_to_embed(tiny_model, tmp_path):
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "a" / "holiday.jpg").write_bytes(b"not named by a 16-hex id, so not an image to index")
    before = files(tmp_path, tiny_model)
    message = refused(run_cli("embed-index", "--model", tiny_model, "--images", images, "--out", tmp_path / "index"),
                      images)
    assert "nothing to embed" in message
    assert files(tmp_path, tiny_model) == before


# -- train ------------------------------------------------------------------------------------------------------------

def test_train_on_shards_without_training_records(shards, tmp_path):
    data = tmp_path / "validation-only"
    data.mkdir()
    for p in [shards / "label_map.csv", *shards.glob("validation-*.tfrec")]:
        shutil.copy2(p, data / p.name)
    before = files(tmp_path)
    message = refused(run_cli("train", "--data", data, "--out", tmp_path / "model", "--strategy", "cpu",
                              "--precision", "float32", "--set", "model.backbone=MobileNetV3Small",
                              "--set", "model.weights=none"), data)
    assert "no training records" in message
    assert files(tmp_path) == before
