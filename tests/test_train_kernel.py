"""The train kernel (``kernels/train/train.py``) as Kaggle runs it: the hardware decides, sessions resume exactly.

Each run renders the kernel as ``kernels push`` sends it and runs it on a
Kaggle-like input tree (the wheel dataset, the shards, a backbone weights file
as a Kaggle Model mounts it). The kernel names no strategy: with no accelerator
it stops at once (the TPU v5e-8, 8 JAX host devices standing in, runs in
``tests/test_kaggle_tpu.py`` on the TPU image's stand-in); TensorFlow on this CPU, allowed with
``runtime.require_accelerator=false``, stands in for the GPU image's path. A
session SIGKILLed mid-epoch is resumed by the next version from its output and
must train on exactly the records the killed one had left, in the same order
(the kernel turns ``data.deterministic`` on), ending where an unbroken run ends.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from helpers import kernel_process, run_kernel

from landmark_kaggle.kaggle import kernels

SMALL = ["data.image_size=32", "model.backbone=MobileNetV3Small", "optim.warmup_epochs=0", "data.shuffle_buffer=4",
         "optim.learning_rate=0.002", "model.dropout=0"]
# The GPU image's path on this CPU: TensorFlow, 8 images a step, 36 records: 4 steps an epoch.
CHAIN = [*SMALL, "runtime.require_accelerator=false", "train.batch_size=8", "train.scale_batch_with_replicas=false",
         "train.epochs=2", "session.checkpoint_every_steps=3"]


@pytest.fixture(scope="module")
def kernel_input(shards, tmp_path_factory):
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.model.network import build_backbone

    inp = tmp_path_factory.mktemp("train_kernel") / "input"
    kernels.build_wheel(inp / kernels.WHEEL_DATASET)
    data = inp / "datasets" / "alice" / "landmark-kaggle-tfrec"
    shutil.copytree(shards, data)
    weights = inp / "mobilenetv3" / "keras" / "small-notop" / "1" / "backbone.weights.h5"
    weights.parent.mkdir(parents=True)
    build_backbone(config_from_dict({}, SMALL[:2])).save_weights(weights)
    return inp, data


def test_the_kernel_names_no_strategy_and_stops_without_an_accelerator(kernel_input, tmp_path):
    inp, _ = kernel_input
    cmd, env, cwd = kernel_process("train", inp, tmp_path / "plan", tmp_path / "r0")
    plan = subprocess.run(cmd, cwd=cwd, env={**env, "LANDMARK_KAGGLE_PLAN": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "runtime.strategy" not in plan.stdout and "data.deterministic=true" in plan.stdout
    # No accelerator: it stops at once, before training anything on the CPU.
    none = run_kernel("train", inp, tmp_path / "w0", tmp_path / "r1", settings=SMALL)
    assert none.returncode == 2 and "no TPU or GPU found" in none.stderr and "Traceback" not in none.stderr
    assert not (tmp_path / "w0" / "model").exists()
    # The TPU v5e-8 (8 devices, 32 images a core, bf16): tests/test_kaggle_tpu.py, on the TPU image's stand-in.


def _kill_group_at_a_mid_epoch_checkpoint(proc, state_file, timeout=900):
    """SIGKILL the kernel and its training child once the newest checkpoint is mid-epoch; returns that state.

    The whole process group is frozen (SIGSTOP) while the state is read, so no newer checkpoint can appear
    between the look and the kill.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if state_file.is_file():
            os.killpg(proc.pid, signal.SIGSTOP)
            state = json.loads(state_file.read_text())
            if state["step_in_epoch"] > 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return state
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no mid-epoch checkpoint before the kernel ended (exit code {proc.poll()})")


def _epoch_ids(data, cfg, epoch, start, steps):
    """The ids of ``steps`` batches of epoch ``epoch``'s stream from batch ``start``, as the trainer builds it."""
    from landmark_kaggle.data.pipeline import build_dataset

    ds = build_dataset(str(data), "train", cfg.data, cfg.train.batch_size, training=True,
                       seed=cfg.train.seed * 100_003 + epoch, start_step=start, with_ids=True)
    return [i.decode() for _, _, ids in ds.take(steps).as_numpy_iterator() for i in ids]


@pytest.mark.slow
def test_a_session_killed_mid_epoch_is_resumed_by_the_next_with_the_records_it_had_left(kernel_input, tmp_path):
    from landmark_kaggle.model.network import load_model_dir, read_model_config

    inp, data = kernel_input
    unbroken = run_kernel("train", inp, tmp_path / "w0", tmp_path / "r0", settings=CHAIN)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    cmd, env, cwd = kernel_process("train", inp, tmp_path / "w1", tmp_path / "r1", settings=CHAIN)
    with (tmp_path / "v1.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state = _kill_group_at_a_mid_epoch_checkpoint(proc, tmp_path / "w1" / "model" / "checkpoint" / "state.json")
    assert not (tmp_path / "w1" / "model" / "config.json").exists()  # killed before its model folder
    # The next version: Kaggle mounts the killed session's working folder among its inputs.
    shutil.copytree(tmp_path / "w1", inp / "landmark-kaggle-train")
    try:
        resumed = run_kernel("train", inp, tmp_path / "w2", tmp_path / "r2", settings=CHAIN)
    finally:
        shutil.rmtree(inp / "landmark-kaggle-train")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {state['global_step']})" in resumed.stdout
    cfg, saved = read_model_config(tmp_path / "w2" / "model" / "config.json")
    _, whole_run = read_model_config(tmp_path / "w0" / "model" / "config.json")
    assert cfg.data.deterministic and saved["status"] == "complete"
    assert saved["global_step"] == whole_run["global_step"] == 2 * state["steps_per_epoch"]

    # The killed epoch: what the first session trained, then what the resumed one trained from the checkpoint.
    e, k, spe = state["epoch"], state["step_in_epoch"], state["steps_per_epoch"]
    first, rest = _epoch_ids(data, cfg, e, 0, k), _epoch_ids(data, cfg, e, k, spe - k)
    whole = _epoch_ids(data, cfg, e, 0, spe)
    assert first + rest == whole and len(set(whole)) == len(whole) == spe * cfg.train.batch_size
    # ... and the resumed run did train on those batches: it ends where the unbroken one ends.
    cols = ["epoch", "lr", "loss", "top1", "val_loss", "val_top1"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "w2" / "model" / "history.csv")[cols],
                                  pd.read_csv(tmp_path / "w0" / "model" / "history.csv")[cols], rtol=1e-4)
    a = load_model_dir(tmp_path / "w2" / "model").model.get_weights()
    b = load_model_dir(tmp_path / "w0" / "model").model.get_weights()
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
