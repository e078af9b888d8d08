"""The trainer on Keras 3's JAX backend, as Kaggle's TPU runs it, with 8 JAX host devices standing in for 8 cores.

Every run is a ``landmark-kaggle train`` child process: the backend and the host
device count are fixed when Keras and JAX start, which the command does from
``runtime.backend`` and ``runtime.devices`` (``backend.choose_backend``). The
runs share one small config (MobileNetV3Small at 32 px, dropout on, every layer
trainable, 2 epochs of 3 steps, global batch 16), the session's tiny shards and
their starting weights (``--init-from`` a model folder this process saves, so
the tests know where training started):

- ``eight``: 8 devices, uninterrupted;
- ``one``: the same on 1 device: DataParallel must compute the same steps;
- ``killed``: 8 devices, SIGKILLed once a mid-epoch checkpoint exists, then
  resumed in a new process: it must reach ``eight``'s history.

This test process itself runs TensorFlow: it reads the JAX runs' model folders
the way the submission kernel does.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import CLI, built_once, heavy, kill_mid_run

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.data.pipeline import build_dataset
from landmark_kaggle.model.network import build_model, load_model_dir
from landmark_kaggle.train.optim import compile_model

# AdamW's epsilon raised so a near-zero gradient's round-off is not turned into a full step (config.py).
SETTINGS = ["data.image_size=32", "model.backbone=MobileNetV3Small", "model.dropout=0.3", "optim.warmup_epochs=0",
            "optim.epsilon=1e-3", "optim.learning_rate=0.002", "optim.decay_rate=0.9", "train.batch_size=16",
            "train.epochs=2", "train.steps_per_epoch=3", "session.checkpoint_every_steps=2", "data.deterministic=true",
            "data.shuffle_buffer=64", "data.min_crop_area=0.7", "data.color_jitter=0.1",
            "runtime.backend=jax", "runtime.precision=float32"]
COMPARED = ["epoch", "lr", "loss", "top1", "val_loss", "val_top1", "steps"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def _train_args(shards, start, out, devices, *extra):
    args = [*CLI, "train", "--data", str(shards), "--out", str(out), "--devices", devices, "--init-from", str(start)]
    for s in SETTINGS:
        args += ["--set", s]
    return [*args, *extra]


def _train(shards, start, out, devices, *extra):
    proc = subprocess.run(_train_args(shards, start, out, devices, *extra), env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _tf_settings():
    return config_from_dict({}, [s for s in SETTINGS if not s.startswith("runtime.")])


@pytest.fixture(scope="module")
def start(shards, tmp_path_factory):
    """The model folder every run starts from (``--init-from``), saved here under TensorFlow, read by the JAX runs."""
    import keras

    from landmark_kaggle.data.gld import read_label_map
    from landmark_kaggle.model.network import save_model_dir

    def build(folder):
        keras.utils.set_random_seed(0)  # the same start in every session: the figures below are reproducible
        save_model_dir(build_model(_tf_settings(), 4), _tf_settings(), read_label_map(shards / "label_map.csv"),
                       folder / "model")
        return folder / "model"
    return built_once(tmp_path_factory, "jax-start", build)


@pytest.fixture(scope="module")
@heavy
def eight(shards, start, tmp_path_factory):
    def train(base):
        return base / "model", _train(shards, start, base / "model", "cpu:8")
    return built_once(tmp_path_factory, "jax-eight", train)


@pytest.fixture(scope="module")
def killed(shards, start, tmp_path_factory):
    """A run SIGKILLed right after its first mid-epoch checkpoint; returns (folder, copy of that checkpoint)."""
    base = tmp_path_factory.mktemp("jax8killed")
    out, state = base / "model", base / "model" / "checkpoint" / "state.json"
    with (base / "train.log").open("w") as log:
        proc = subprocess.Popen(_train_args(shards, start, out, "cpu:8"), env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            kill_mid_run(proc, lambda: json.loads(state.read_text()) if state.is_file() else None,
                         lambda s: s is not None and s["global_step"] >= 2, timeout=900)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(base / 'train.log').read_text()[-2000:]}") from None
    assert proc.returncode == -signal.SIGKILL
    snapshot = base / "at-kill"
    shutil.copytree(out / "checkpoint", snapshot)
    return out, snapshot


def _weights(folder):
    return load_model_dir(folder).model.get_weights()


def _checkpoint_weights(snapshot):
    """The model weights of a checkpoint, read the way the trainer reads them (here under TensorFlow)."""
    cfg = _tf_settings()
    model = build_model(cfg, 4)
    compile_model(model, cfg, steps_per_epoch=3)
    model.optimizer.build(model.trainable_variables)
    state = json.loads((snapshot / "state.json").read_text())
    model.load_weights(snapshot / state["weights"])
    # The JAX run's weights and AdamW state load under TensorFlow: the same numbers on either backend.
    assert int(model.optimizer.iterations.numpy()) == state["global_step"]
    return state["global_step"], model.get_weights()


@pytest.mark.slow
def test_eight_jax_devices_train_what_one_device_trains(shards, start, eight, tmp_path):
    out8, stdout = eight
    assert "runtime: backend jax -> jax" in stdout and "jax cpu, 8 cpu device(s), float32" in stdout
    saved = json.loads((out8 / "config.json").read_text())
    assert (saved["backend"], saved["replicas"], saved["global_step"]) == ("jax", 8, 6)
    assert saved["init_from"]["reinitialised"] == []
    out1 = tmp_path / "one"
    assert "jax cpu, 1 cpu device(s)" in _train(shards, start, out1, "cpu:1")
    model8 = load_model_dir(out8).model
    w8, w1 = model8.get_weights(), _weights(out1)
    trainable = [v.trainable for v in model8.weights]
    backbone = [i for i, v in enumerate(model8.weights) if v.trainable and i < len(model8.layers[1].weights)]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(w8, w1, strict=True))
    w0 = _weights(start)
    moved = [float(np.abs(a - b).max()) for a, b in zip(w8, w0, strict=True)]
    h8, h1 = pd.read_csv(out8 / "history.csv"), pd.read_csv(out1 / "history.csv")
    gap = np.sqrt(sum(float(np.square(a - b).sum()) for a, b in zip(w8, w1, strict=True)))
    travel = np.sqrt(sum(float(np.square(a - b).sum()) for a, b in zip(w8, w0, strict=True)))
    print(f"8 vs 1 device after 6 steps: max |diff| {diff:.3g}, |w8 - w1| / |w8 - w0| = {gap / travel:.3g}; "
          f"weights moved up to {max(moved):.3g}, {sum(trainable)} trainable arrays; backbone arrays moved "
          f"min {min(moved[i] for i in backbone):.3g} median {np.median([moved[i] for i in backbone]):.3g}; "
          f"history {h8[COMPARED].to_dict('list')} vs {h1[COMPARED].to_dict('list')}")
    # Every trainable backbone array (BatchNorm's scale and offset included: nothing frozen) trained.
    # (A frozen array moves by exactly 0; with epsilon 1e-3 a near-zero gradient moves its array very little.)
    assert len(backbone) > 100 and min(moved[i] for i in backbone) > 0
    assert np.median([moved[i] for i in backbone]) > 1e-3
    # The two device counts sum the batch in another order, and AdamW's normalised step still magnifies that
    # round-off where gradients are small next to epsilon, so the weights agree to a small share of how far
    # they moved, not to float precision. Measured: max |diff| 7e-4, relative 0.35% (with Keras' epsilon
    # 1e-7: 5.5e-3 and 0.9%, and the epoch-2 loss 5e-4 apart).
    assert gap / travel < 0.01 and diff < 5e-3
    pd.testing.assert_frame_equal(h8[COMPARED], h1[COMPARED], rtol=1e-4)


@pytest.mark.slow
def test_sigkilled_jax_run_resumes_to_the_uninterrupted_history(shards, start, eight, killed):
    out, snapshot = killed
    step, _ = _checkpoint_weights(snapshot)
    assert 2 <= step < 6 and not (out / "config.json").is_file()
    stdout = _train(shards, start, out, "cpu:8", "--resume")
    assert "train: complete, 2/2 epochs, 6 steps" in stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv")[COMPARED],
                                  pd.read_csv(eight[0] / "history.csv")[COMPARED], rtol=1e-5)
    for a, b in zip(_weights(out), _weights(eight[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


JAX_LOGITS = """
import sys
import numpy as np
from landmark_kaggle.train.backend import choose_backend
from landmark_kaggle.config import RuntimeConfig
choose_backend(RuntimeConfig(backend="jax", devices="cpu"), announce=False)
import keras
from landmark_kaggle.model.network import load_model_dir
assert keras.backend.backend() == "jax"
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(load_model_dir(sys.argv[1]).model.predict(images, verbose=0)))
"""


# The submission path in the stand-in for Kaggle's GPU image (TF 2.20, Keras 3.13), the package from its wheel.
STANDIN_LOGITS = """
import sys
import numpy as np
import keras
from landmark_kaggle.infer.embedder import load_for_inference
assert keras.backend.backend() == "tensorflow", keras.backend.backend()
bundle = load_for_inference(sys.argv[1])
cos, _ = bundle.embed_fn(np.load(sys.argv[2]))
np.save(sys.argv[3], np.asarray(cos) * bundle.config.model.scale)
print(keras.__version__, __import__("landmark_kaggle").__file__)
"""


@pytest.mark.slow
def test_a_jax_trained_model_gives_the_same_logits_in_the_tensorflow_submission_path(shards, eight, wheel, tmp_path):
    from landmark_kaggle.infer.embedder import load_for_inference

    out8 = eight[0]
    bundle = load_for_inference(out8)
    images = np.concatenate([b[0].numpy() for b in build_dataset(str(shards), "validation", bundle.config.data, 8,
                                                                 training=False)])
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", JAX_LOGITS, str(out8), str(tmp_path / "images.npy"),
                           str(tmp_path / "jax.npy")], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jax_logits = np.load(tmp_path / "jax.npy")
    cos, _ = bundle.embed_fn(images)
    tf_logits = cos * bundle.config.model.scale
    assert tf_logits.shape == jax_logits.shape == (len(images), 4)
    print(f"JAX vs TensorFlow logits: max |diff| {np.abs(tf_logits - jax_logits).max():.3g}")
    np.testing.assert_allclose(tf_logits, jax_logits, atol=1e-3)
    np.testing.assert_array_equal(tf_logits.argmax(1), jax_logits.argmax(1))
    # ... and on Kaggle's GPU image, installed as the submission kernel installs it.
    from helpers import standin_python

    python, site = standin_python("gpu"), tmp_path / "site"
    env = {k: v for k, v in _env().items() if k != "VIRTUAL_ENV"}
    subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(site),
                    str(wheel)], check=True, env=env)
    proc = subprocess.run([str(python), "-c", STANDIN_LOGITS, str(out8), str(tmp_path / "images.npy"),
                           str(tmp_path / "kaggle.npy")], env={**env, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("3.13.2 " + str(site)), proc.stdout  # Kaggle's Keras, our code from the wheel
    kaggle_logits = np.load(tmp_path / "kaggle.npy")
    print(f"JAX vs Kaggle's GPU image logits: max |diff| {np.abs(kaggle_logits - jax_logits).max():.3g}")
    np.testing.assert_allclose(kaggle_logits, jax_logits, atol=1e-3)
    np.testing.assert_array_equal(kaggle_logits.argmax(1), jax_logits.argmax(1))
