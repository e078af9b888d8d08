"""The train kernel end to end in the stand-in for Kaggle's TPU VM image, two versions chained, then scored.

``.venv-kaggle-tpu`` (``envs/kaggle-tpu.txt``: tensorflow-cpu 2.20.0, the newest
keras and jax CPU wheels) runs ``kernels/train/train.py`` as ``kernels push``
sends it, with our wheel installed ``--no-deps`` by the prelude, on a Kaggle-like
input tree: the wheel dataset, the shard dataset in the newer
``datasets/<owner>/<slug>`` layout, a backbone weights file as a Kaggle Model
and a decoy ``.h5``. The kernel takes the accelerator it finds and refuses the
CPU; ``runtime.strategy=tpu`` with ``runtime.devices=cpu:8`` (passed the
documented way, ``LANDMARK_KAGGLE_ARGS``) lets 8 JAX host devices stand in for
the TPU, in bfloat16 as on one, with the kernel's own batch rule (32 images a core).
Version 2 finds version 1's output among its inputs, copies
the checkpoint in and resumes; the model folder it writes goes through the
offline submission kernel and ``score``.
"""

import json
import shutil

import pandas as pd
import pytest
from helpers import run_kernel, score_json, standin_python

from landmark_kaggle.kaggle import kernels
from landmark_kaggle.paths import COMPETITION

# The kernel names no strategy (the hardware decides); the stand-in asks for the TPU the documented way.
# No batch size: the kernel's own rule (32 images a core, 256 on the v5e-8) is part of what is checked.
REHEARSAL = ["data.image_size=32", "model.backbone=MobileNetV3Small", "train.steps_per_epoch=2",
             "optim.warmup_epochs=0", "data.shuffle_buffer=64", "runtime.strategy=tpu", "runtime.devices=cpu:8"]


@pytest.fixture(scope="module")
def tpu_python():
    return standin_python("tpu")


def _backbone_files(inp):
    """A MobileNetV3Small no-top weights file as a Kaggle Model mounts it, and an .h5 of something else."""
    import keras

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.model.network import build_backbone

    model_dir = inp / "mobilenetv3" / "keras" / "small-notop" / "1"
    model_dir.mkdir(parents=True)
    build_backbone(config_from_dict({}, REHEARSAL[:2])).save_weights(model_dir / "backbone.weights.h5")
    decoy = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    (inp / "decoy").mkdir()
    decoy.save_weights(inp / "decoy" / "other.weights.h5")
    return model_dir / "backbone.weights.h5"


@pytest.mark.slow
def test_train_kernel_chains_two_versions_on_8_jax_devices_and_the_submission_kernel_scores_it(
        shards, tpu_python, tmp_path):
    inp = tmp_path / "input"
    kernels.build_wheel(inp / kernels.WHEEL_DATASET)
    shutil.copytree(shards, inp / "datasets" / "alice" / "landmark-kaggle-tfrec")
    weights = _backbone_files(inp)

    def version(working, settings):
        return run_kernel("train", inp, working, tmp_path / "rendered", python=tpu_python, settings=settings)

    # With no accelerator there, the kernel stops at once and trains nothing on the CPU.
    no_tpu = version(tmp_path / "w0", ["data.image_size=32"])
    assert no_tpu.returncode == 2 and "no TPU or GPU found" in no_tpu.stderr and "Traceback" not in no_tpu.stderr
    assert not (tmp_path / "w0" / "model").exists()

    v1 = version(tmp_path / "w1", [*REHEARSAL, "train.epochs=1"])
    assert v1.returncode == 0, v1.stderr[-3000:]
    assert "runtime: backend auto -> jax (runtime.devices = cpu:8 names JAX devices)" in v1.stdout
    assert "8 cpu device(s)" in v1.stdout and "host devices stand in for the TPU" in v1.stdout
    assert f"backbone weights {weights} (attached)" in v1.stdout and "a fresh start" in v1.stdout
    model1 = tmp_path / "w1" / "model"
    saved1 = json.loads((model1 / "config.json").read_text())
    assert (saved1["backend"], saved1["replicas"], saved1["global_step"]) == ("jax", 8, 2)
    # The kernel's batch rule: 32 images a core, and the learning rate set for 32 scaled by sqrt(256 / 32).
    assert saved1["global_batch"] == 256 and saved1["lr_factor"] == pytest.approx(8 ** 0.5)
    assert saved1["data"]["deterministic"] is True and saved1["runtime"]["strategy"] == "tpu"
    # precision=auto on the TPU (stand-in): bf16, read back from the built network.
    assert (saved1["precision"], saved1["compute_dtype"], saved1["loss_scaling"]) == ("mixed_bfloat16", "bfloat16",
                                                                                      False)
    assert saved1["model"]["weights"] == str(weights)

    # Version 2: Kaggle mounts version 1's output (its whole working folder) among the inputs.
    shutil.copytree(tmp_path / "w1", inp / "landmark-kaggle-train")
    v2 = version(tmp_path / "w2", [*REHEARSAL, "train.epochs=2"])
    assert v2.returncode == 0, v2.stderr[-3000:]
    assert f"resuming from {inp / 'landmark-kaggle-train' / 'model'} (step 2)" in v2.stdout
    model2 = tmp_path / "w2" / "model"
    saved2 = json.loads((model2 / "config.json").read_text())
    assert (saved2["status"], saved2["epochs_trained"], saved2["global_step"]) == ("complete", 2, 4)
    h1, h2 = pd.read_csv(model1 / "history.csv"), pd.read_csv(model2 / "history.csv")
    assert list(h2["epoch"]) == [1, 2]
    pd.testing.assert_frame_equal(h2.iloc[:1].drop(columns="seconds"), h1.drop(columns="seconds"))

    # The offline submission kernel (this venv) scores the JAX-trained model folder.
    sub_in, sub_work = tmp_path / "sub" / "input", tmp_path / "sub" / "working"
    gld = shards.parent / "gld"
    shutil.copytree(gld / "test", sub_in / COMPETITION / "test")
    shutil.copy2(gld / "sample_submission.csv", sub_in / COMPETITION / "sample_submission.csv")
    kernels.bundle(sub_in, "alice", model_dir=model2)
    proc = run_kernel("submission", sub_in, sub_work, tmp_path / "rendered-sub")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = score_json(gld / "solution.csv", sub_work / "submission.csv")
    ids = pd.read_csv(gld / "sample_submission.csv", dtype=str)["id"]
    assert result["n_images"] == len(ids) and 0.0 <= result["gap"] <= 1.0
    # A model of 4 training steps need not beat guessing; every image must still get an answer.
    assert json.loads((sub_work / "submission.predict.json").read_text())["no_prediction"] == 0
