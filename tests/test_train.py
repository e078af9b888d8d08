"""The trainer end to end on tiny shards: loss falls, the model folder reloads exactly, resume is exact.

Resume is tested after a real SIGKILL of a ``landmark-kaggle train`` process, and after a time budget.

The shared ``trained`` fixture is EfficientNetV2-S at 32 px (the poster's
backbone). The resume and time-budget tests train five more times, so they use
MobileNetV3Small through the same ``model.backbone`` field: five EfficientNetV2-S
traces alone would take most of the CI budget on two cores.
"""

import json
import signal
import subprocess

import keras
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from helpers import CLI, built_once, heavy, kill_mid_run

from landmark_kaggle.cli import main
from landmark_kaggle.config import config_from_dict
from landmark_kaggle.config_args import parse_duration
from landmark_kaggle.data.gld import read_label_map
from landmark_kaggle.data.pipeline import build_dataset
from landmark_kaggle.errors import UserError
from landmark_kaggle.model.network import build_model, embedding_model, load_model_dir
from landmark_kaggle.train.distribute import setup_runtime
from landmark_kaggle.train.loop import train_model
from landmark_kaggle.train.optim import compile_model

BASE = ["data.image_size=32", "optim.warmup_epochs=0", "optim.learning_rate=0.002", "model.dropout=0",
        "train.batch_size=8", "runtime.strategy=cpu", "runtime.precision=float32", "data.deterministic=true",
        "data.shuffle_buffer=64", "data.min_crop_area=0.7", "data.color_jitter=0.1", "optim.decay_rate=0.9"]
# Dropout on, so the resumed runs must also restore the dropout masks' random state.
SMALL = [*BASE, "model.backbone=MobileNetV3Small", "train.epochs=3", "train.steps_per_epoch=3",
         "session.checkpoint_every_steps=2", "model.dropout=0.3"]
COMPARED = ["epoch", "lr", "loss", "top1", "top10", "val_loss", "val_top1", "val_top10", "steps"]


@pytest.fixture(scope="module")
@heavy
def trained(shards, tmp_path_factory):
    cfg = config_from_dict({}, [*BASE, "train.epochs=6", "train.steps_per_epoch=4"])

    def train(base):
        return cfg, base / "model", train_model(str(shards), base / "model", cfg, progress=False)
    return built_once(tmp_path_factory, "train-v2s", train)


def test_loss_falls_on_a_tiny_dataset(trained):
    _, out, summary = trained
    history = pd.read_csv(out / "history.csv")
    assert summary["status"] == "complete" and summary["epochs_done"] == 6 and summary["global_step"] == 24
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert history["loss"].iloc[-2:].mean() < 0.8 * history["loss"].iloc[0]
    assert history["top1"].iloc[-2:].mean() > history["top1"].iloc[0]


def test_history_has_topk_columns_and_the_plots_are_pngs(trained):
    cfg, out, _ = trained
    history = pd.read_csv(out / "history.csv")
    for prefix in ("", "val_"):
        ks = history[[f"{prefix}top{k}" for k in (1, 10, 100, 1000)]].to_numpy()
        assert np.all(np.diff(ks, axis=1) >= 0)  # top-k accuracy never falls as k grows
        assert np.all(ks[:, 1:] == 1.0)  # 4 classes: any k >= 4 always hits
    np.testing.assert_allclose(history["lr"], 0.002 * 0.9 ** np.arange(6) * (1 - 1e-6 / 0.002) + 1e-6, rtol=1e-6)
    for name in ("lr", "loss", "topk"):
        image = mpimg.imread(out / "plots" / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


@pytest.mark.slow
def test_saved_model_reloads_without_custom_objects_and_gives_identical_logits(trained, shards):
    cfg, out, _ = trained
    bundle = load_model_dir(out)
    assert bundle.config == cfg and getattr(bundle.model, "optimizer", None) is None
    assert bundle.label_map.equals(read_label_map(shards / "label_map.csv"))
    assert json.loads((out / "config.json").read_text())["num_classes"] == 4
    # The in-training model, rebuilt from its last checkpoint (weights + AdamW state), vs the saved folder.
    live = build_model(cfg, 4)
    compile_model(live, cfg, steps_per_epoch=4)
    live.optimizer.build(live.trainable_variables)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    live.load_weights(out / "checkpoint" / state["weights"])
    assert int(live.optimizer.iterations.numpy()) == 24
    images, _ = next(iter(build_dataset(str(shards), "validation", cfg.data, 8, training=False)))
    logits = bundle.model.predict(images, verbose=0)
    assert logits.dtype == np.float32 and logits.shape == (len(images), 4)
    np.testing.assert_array_equal(logits, live.predict(images, verbose=0))
    emb = embedding_model(bundle.model).predict(images, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert bundle.model.get_layer("embedding").output.shape[-1] == emb.shape[-1]


def _history(out):
    return pd.read_csv(out / "history.csv")[COMPARED]


@pytest.fixture(scope="module")
@heavy
def uninterrupted(shards, tmp_path_factory):
    def train(base):
        train_model(str(shards), base / "model", config_from_dict({}, SMALL), progress=False)
        return base / "model"
    return built_once(tmp_path_factory, "train-uninterrupted", train)


def _cli_args(shards, out, extra=()):
    args = ["train", "--data", str(shards), "--out", str(out), "--strategy", "cpu", "--precision", "float32"]
    for s in [*SMALL, *extra]:
        args += ["--set", s]
    return args


def _kill_at_a_mid_epoch_checkpoint(proc, state_file, min_step, timeout=600):
    """SIGKILL ``proc`` while its newest checkpoint is mid-epoch at ``min_step`` or later; returns that state.

    ``kill_mid_run`` freezes the process (SIGSTOP) before each look, so it cannot write a newer checkpoint
    between the look and the kill; a checkpoint that is not the wanted one lets it run on (SIGCONT).
    """
    def state():
        return json.loads(state_file.read_text()) if state_file.is_file() else None

    def wanted(s):
        return s is not None and s["step_in_epoch"] > 0 and s["global_step"] >= min_step

    return kill_mid_run(proc, state, wanted, timeout=timeout)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(shards, uninterrupted, tmp_path, capsys):
    out = tmp_path / "model"
    with (tmp_path / "train.log").open("w") as log:
        proc = subprocess.Popen([*CLI, *_cli_args(shards, out)], stdout=log, stderr=subprocess.STDOUT)
        # Checkpoints every 2 steps of 3-step epochs: global step 4 is epoch 2, step 1 (8: epoch 3, step 2).
        state = _kill_at_a_mid_epoch_checkpoint(proc, out / "checkpoint" / "state.json", min_step=4)
    assert proc.returncode == -signal.SIGKILL
    assert (state["epoch"], state["step_in_epoch"]) in ((1, 1), (2, 2)) and state["partial"]["steps"] > 0
    assert not (out / "config.json").exists()  # it died before writing its model folder
    assert main(_cli_args(shards, out)) == 2 and "--resume" in capsys.readouterr().err
    assert main(_cli_args(shards, out, ["optim.learning_rate=0.01"]) + ["--resume"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err
    # A new process, as a new Kaggle session would be.
    resumed = subprocess.run([*CLI, *_cli_args(shards, out), "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["status"], saved["global_step"], saved["backend"]) == ("complete", 9, "tensorflow")
    a, b = load_model_dir(out).model.get_weights(), load_model_dir(uninterrupted).model.get_weights()
    print(f"resumed vs uninterrupted: max |loss diff| "
          f"{(_history(out)['loss'] - _history(uninterrupted)['loss']).abs().max():.3g}, max |weight diff| "
          f"{max(float(np.abs(wa - wb).max()) for wa, wb in zip(a, b, strict=True)):.3g}")
    # The same ops on the same numbers in the same order: measured equal to the last bit on this CPU. The
    # tolerances leave room for another CPU's kernels, far below what a lost or repeated step changes
    # (the learning rate is 2e-3 a step).
    pd.testing.assert_frame_equal(_history(out), _history(uninterrupted), rtol=1e-4)
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_time_budget_stops_cleanly_saves_and_resume_finishes_the_same_run(shards, uninterrupted, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["train", "--data", str(shards), "--out", str(out), "--strategy", "cpu", "--precision", "float32"]
    for s in SMALL:
        args += ["--set", s]
    assert main([*args, "--time-budget", "8 hours"]) == 2
    assert "8h30m" in capsys.readouterr().err and not out.exists()
    # A budget spent before the first step ends: the run stops after exactly one step, however fast the machine.
    assert main([*args, "--time-budget", "0s"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["status"] == "time budget" and saved["global_step"] == 1
    assert "train: time budget" in capsys.readouterr().out  # the one-line summary
    assert load_model_dir(out).model.output_shape == (None, 4)  # a usable model folder already
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "config.json").read_text())["status"] == "complete"
    pd.testing.assert_frame_equal(_history(out), _history(uninterrupted), rtol=1e-4)


def test_parse_duration():
    assert parse_duration("8h30m") == 8 * 3600 + 30 * 60
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45 and parse_duration("120") == 120
    assert parse_duration("") is None
    with pytest.raises(UserError, match="8h30m"):
        parse_duration("8 hours")


@pytest.mark.slow
def test_mixed_bfloat16_on_cpu_trains_and_logits_are_float32(shards, tmp_path):
    cfg = config_from_dict({}, [*SMALL, "runtime.precision=mixed_bfloat16", "train.epochs=1",
                                "session.checkpoint_every_steps=0"])
    try:
        rt = setup_runtime("cpu", "mixed_bfloat16")
        summary = train_model(str(shards), tmp_path / "model", cfg, runtime=rt, progress=False)
        assert summary["precision"] == "mixed_bfloat16" and np.isfinite(summary["history"][0]["loss"])
        # A model folder is rebuilt in float32 unless inference asks for bf16 (inference.precision).
        plain = load_model_dir(tmp_path / "model").model
        assert next(la for la in plain.layers[1].layers if isinstance(la, keras.layers.Conv2D)).compute_dtype == \
            "float32"
        model = load_model_dir(tmp_path / "model", precision="bfloat16").model
        assert model.get_layer("logits").compute_dtype == "float32"
        conv = next(la for la in model.layers[1].layers if isinstance(la, keras.layers.Conv2D))
        assert conv.compute_dtype == "bfloat16"
        images, _ = next(iter(build_dataset(str(shards), "validation", cfg.data, 4, training=False)))
        logits = model.predict(images, verbose=0)
        assert logits.dtype == np.float32 and np.all(np.isfinite(logits)) and np.all(np.abs(logits) <= 30.0 + 1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_resume_check_refuses_a_changed_setting_but_not_the_embedding_only_sample_rate(tmp_path):
    from landmark_kaggle.train.loop import _check_same_run, _flat

    cfg = config_from_dict({"train": {"epochs": 2}})
    old = _flat(cfg)
    del old["embeddings.class_sample"]  # a checkpoint written before the field existed
    _check_same_run({"config": old, "num_classes": 4}, cfg, 4, tmp_path)
    _check_same_run({"config": old | {"embeddings.class_sample": 0.3}, "num_classes": 4}, cfg, 4, tmp_path)
    changed = _flat(config_from_dict({"train": {"epochs": 2, "learning_rate": 0.5}}))
    with pytest.raises(UserError, match=r"optim.learning_rate: 0.5 -> 0.001"):
        _check_same_run({"config": changed, "num_classes": 4}, cfg, 4, tmp_path)


@pytest.mark.slow
def test_two_steps_a_compiled_call_train_the_same_steps_as_one(shards, tmp_path):
    # The step-end callback then sees every second step: it must still count 8 steps, stop epochs on time and
    # give the history and weights of one step a call (the same ops on the same batches).
    base = [*BASE, "model.backbone=MobileNetV3Small", "train.epochs=2", "train.steps_per_epoch=4",
            "session.checkpoint_every_steps=2"]
    out = {}
    for n in (1, 2):
        out[n] = tmp_path / f"n{n}"
        summary = train_model(str(shards), out[n], config_from_dict({}, [*base, f"runtime.steps_per_execution={n}"]),
                              progress=False)
        assert (summary["global_step"], summary["epochs_done"]) == (8, 2)
        assert json.loads((out[n] / "config.json").read_text())["steps_per_execution"] == n
    pd.testing.assert_frame_equal(_history(out[2]), _history(out[1]), rtol=1e-4)
    a, b = load_model_dir(out[2]).model.get_weights(), load_model_dir(out[1]).model.get_weights()
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
