"""``train --kaggle``'s finders on a Kaggle-like input tree: shards, previous outputs of this run, weight files.

The trees are laid out the ways Kaggle mounts inputs (``<slug>/``,
``datasets/<owner>/<slug>/``, a Model's ``<model>/<framework>/<variation>/<version>/``,
a kernel's output with its ``model/`` folder) next to a GLDv2 image tree that
must not be walked. The full chain, with training, is tests/test_kaggle_tpu.py.
"""

import json
import shutil

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.paths import KAGGLE_INPUT_ENV, KAGGLE_WORKING_ENV, find_inputs
from landmark_kaggle.train.kaggle_session import (
    keras_weight_files,
    prepare_session,
)
from landmark_kaggle.train.loop import _flat

SETTINGS = ["data.image_size=32", "model.backbone=MobileNetV3Small", "train.epochs=2"]


def _output(folder, cfg, step):
    """A previous version's output: a model folder whose checkpoint was made with ``cfg`` at ``step``."""
    ckpt = folder / "model" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / f"state-{step:09d}.weights.h5").write_bytes(b"weights")
    (ckpt / "state.json").write_text(json.dumps({"global_step": step, "config": _flat(cfg), "num_classes": 4,
                                                 "weights": f"state-{step:09d}.weights.h5"}))
    (folder / "model" / "label_map.csv").write_text("label,landmark_id,count\n")
    return folder / "model"


def test_finders_and_the_copied_previous_output(shards, tmp_path, monkeypatch):
    inp, working = tmp_path / "input", tmp_path / "working"
    shutil.copytree(shards, inp / "datasets" / "alice" / "landmark-kaggle-tfrec")
    for d in "0123456789abcdef":  # a GLDv2 image tree: never walked (it holds millions of files on Kaggle)
        (inp / "landmark-recognition-2021" / "train" / d / "0").mkdir(parents=True)
    (inp / "landmark-recognition-2021" / "train" / "a" / "0" / "x.weights.h5").write_bytes(b"not walked")
    weights = inp / "effnet" / "keras" / "v2s-notop" / "1" / "backbone.h5"  # a Kaggle Model, version folder "1"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"h5")
    cfg = config_from_dict({}, SETTINGS)
    mine = _output(inp / "landmark-kaggle-train", cfg, 6)
    _output(inp / "older-kernel", config_from_dict({}, SETTINGS), 3)
    _output(inp / "stage-one", config_from_dict({}, [*SETTINGS, "data.image_size=64"]), 40)

    found = find_inputs(inp)
    assert [p.name for p in found["shards"]] == ["landmark-kaggle-tfrec"]
    assert sorted(p.parent.name for p in found["train_output"]) == ["landmark-kaggle-train", "older-kernel",
                                                                          "stage-one"]
    # Checkpoints, model folders' own files and anything inside the image tree are left out.
    assert keras_weight_files(found) == [weights]

    monkeypatch.setenv(KAGGLE_INPUT_ENV, str(inp))
    monkeypatch.setenv(KAGGLE_WORKING_ENV, str(working))
    session = prepare_session(cfg)
    # The furthest checkpoint made with these settings; an earlier stage's (another image size) is not one.
    assert session.previous == mine and session.resume and session.out == working / "model"
    assert (working / "model" / "checkpoint" / "state-000000006.weights.h5").read_bytes() == b"weights"
    assert len(session.ignored) == 1 and "data.image_size: 64 -> 32" in session.ignored[0]
    assert session.weights is None  # model.weights=none: nothing to look for
    # Started again (a second session of the same version): its own checkpoint wins, nothing is copied over it.
    (working / "model" / "checkpoint" / "state.json").write_text(
        (working / "model" / "checkpoint" / "state.json").read_text().replace('"global_step": 6', '"global_step": 7'))
    again = prepare_session(cfg)
    assert again.previous is None and again.resume
    assert json.loads((working / "model" / "checkpoint" / "state.json").read_text())["global_step"] == 7


def test_every_part_of_a_build_is_a_shard_folder_also_one_without_train_shards(tmp_path):
    # split_parts spreads each split over the parts: a build with fewer train shards than parts has a part of
    # validation shards only, which training still reads (its validation set).
    for k, names in ((1, ["train-00000-of-00001.tfrec"]), (2, ["validation-00000-of-00001.tfrec"])):
        part = tmp_path / f"landmark-kaggle-build-write-part-{k}" / "tfrec" / f"gldv2-tfrec-512-part-{k}"
        part.mkdir(parents=True)
        (part / "label_map.csv").write_text("label,landmark_id,count\n")
        for name in names:
            (part / name).write_bytes(b"")
    assert [p.name for p in find_inputs(tmp_path)["shards"]] == ["gldv2-tfrec-512-part-1", "gldv2-tfrec-512-part-2"]
