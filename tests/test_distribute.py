"""Strategy and precision selection, and real distributed training in subprocesses.

Logical CPU devices must be configured before TensorFlow initialises, and
MultiWorkerMirroredStrategy needs one process per worker, so those runs are
child processes. They use MobileNetV3Small through ``model.backbone``: three
more EfficientNetV2-S traces on two cores would not fit the CI budget.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.distribute import get_strategy, global_batch, resolve_precision, setup_runtime
from landmark_kaggle.errors import UserError

# AdamW's epsilon raised so a near-zero gradient's round-off is not turned into a full step (config.py).
SMALL = ["data.image_size=32", "model.backbone=MobileNetV3Small", "model.dropout=0", "optim.warmup_epochs=0",
         "optim.epsilon=1e-3", "train.batch_size=8", "data.deterministic=true", "data.shuffle_buffer=32"]


def _run_children(scripts, envs, timeout=600):
    procs = [subprocess.Popen([sys.executable, "-c", s], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for s, e in zip(scripts, envs, strict=True)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def test_auto_picks_the_default_strategy_and_float32_on_this_cpu(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy, kind = get_strategy("auto")
    assert kind == "cpu" and strategy.num_replicas_in_sync == 1
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("auto", "tpu") == "mixed_bfloat16"
    assert resolve_precision("mixed_float16", "cpu") == "mixed_float16"
    with pytest.raises(UserError, match="no TPU"):
        get_strategy("tpu")
    with pytest.raises(UserError, match="TF_CONFIG"):
        get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG"):
        get_strategy("auto")


def test_global_batch_and_learning_rate_scale_with_replicas():
    cfg = config_from_dict({}, ["train.batch_size=16"])
    assert global_batch(cfg, 8) == (16, 1.0)
    scaled = config_from_dict({}, ["train.batch_size=16", "train.scale_batch_with_replicas=true"])
    assert global_batch(scaled, 8) == (128, 8.0)
    with pytest.raises(UserError, match="split evenly"):
        global_batch(config_from_dict({}, ["train.batch_size=6"]), 4)


def test_mixed_float16_wraps_adamw_in_a_loss_scale_optimizer():
    from landmark_kaggle.model import build_model
    from landmark_kaggle.optim import compile_model

    try:
        rt = setup_runtime("cpu", "mixed_float16")
        cfg = config_from_dict({}, SMALL)
        model = build_model(cfg, 3)
        compile_model(model, cfg)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.get_layer("logits").compute_dtype == "float32"
        assert rt.precision == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


MIRRORED = textwrap.dedent("""
    import json
    from landmark_kaggle.distribute import setup_runtime, split_cpu
    split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.model import build_model
    from landmark_kaggle.optim import compile_model
    from landmark_kaggle.train import train_model

    small = {SMALL!r}
    cfg = config_from_dict({{}}, [*small, "optim.learning_rate=0.01"])
    rng = np.random.default_rng(0)
    y = np.arange(32) % 4
    x = (rng.uniform(0, 120, (32, 32, 32, 3)) + 30 * y[:, None, None, None]).astype("float32")

    def fit(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_model(cfg, 4)
            # BatchNorm statistics are per replica (4 images vs 8): freeze the backbone so both
            # runs compute the same function and only the gradient all-reduce is compared.
            model.layers[1].trainable = False
            compile_model(model, cfg, steps_per_epoch=4)
        first = model.get_layer("logits").get_weights()[0]
        hist = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        return hist.history["loss"], first, model.get_layer("logits").get_weights()[0], model.predict(x, verbose=0)

    rt = setup_runtime("mirrored", "float32")
    two = fit(rt.strategy)
    one = fit(tf.distribute.OneDeviceStrategy("/cpu:0"))
    summary = train_model({shards!r}, {out!r}, config_from_dict({{}}, [*small, "runtime.strategy=mirrored",
                          "train.epochs=1", "train.steps_per_epoch=2"]), runtime=rt, progress=False)
    # The padded, two-replica validation against a plain one-device pass over the same images.
    from landmark_kaggle.model import load_model_dir
    from landmark_kaggle.optim import make_loss, topk_metrics
    from landmark_kaggle.pipeline import build_dataset
    saved = load_model_dir({out!r}).model
    saved.compile(loss=make_loss(cfg), metrics=topk_metrics(4))
    plain = saved.evaluate(build_dataset({shards!r}, "validation", cfg.data, 8, training=False), return_dict=True,
                           verbose=0)
    h = summary["history"][0]
    print(json.dumps({{"replicas": rt.replicas, "kind": rt.kind, "loss_two": two[0], "loss_one": one[0],
                      "init_diff": float(np.abs(two[1] - one[1]).max()),
                      "moved": float(np.abs(two[2] - two[1]).max()),
                      "weight_diff": float(np.abs(two[2] - one[2]).max()),
                      "logit_diff": float(np.abs(two[3] - one[3]).max()),
                      "val": [h["val_loss"], h["val_top1"]], "plain_val": [plain["loss"], plain["top1"]],
                      "summary": {{k: summary[k] for k in ("status", "replicas", "global_step", "strategy")}}}}))
""")


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_trains_and_matches_one_device(shards, tmp_path):
    script = MIRRORED.format(SMALL=SMALL, shards=str(shards), out=str(tmp_path / "model"))
    (res,) = _run_children([script], [_env()])
    assert res["replicas"] == 2 and res["kind"] == "mirrored"
    assert res["init_diff"] == 0.0 and res["moved"] > 1e-3
    np.testing.assert_allclose(res["loss_two"], res["loss_one"], rtol=1e-4)
    assert res["weight_diff"] < 1e-4 and res["logit_diff"] < 1e-2
    assert res["summary"] == {"status": "complete", "replicas": 2, "global_step": 2, "strategy": "mirrored"}
    np.testing.assert_allclose(res["val"], res["plain_val"], rtol=1e-4)
    assert (tmp_path / "model" / "model.weights.h5").is_file()


WORKER = textwrap.dedent("""
    import json
    from landmark_kaggle.distribute import setup_runtime
    rt = setup_runtime("multiworker", "float32")
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.train import train_model
    cfg = config_from_dict({{}}, [*{SMALL!r}, "runtime.strategy=multiworker", "train.epochs=1",
                                   "train.steps_per_epoch=3", "session.checkpoint_every_steps=2"])
    s = train_model({shards!r}, {out!r}, cfg, runtime=rt, progress=False)
    print(json.dumps({{"chief": rt.is_chief, "replicas": rt.replicas, "status": s["status"],
                      "global_step": s["global_step"], "loss": s["history"][0]["loss"]}}))
""")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_with_two_local_processes_trains_an_epoch(shards, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    scripts, envs = [], []
    for i in range(2):
        scripts.append(WORKER.format(SMALL=SMALL, shards=str(shards), out=str(tmp_path / f"out{i}")))
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        envs.append(_env(TF_CONFIG=json.dumps(tf_config)))
    res = _run_children(scripts, envs)
    assert [r["chief"] for r in res] == [True, False]
    assert all(r["replicas"] == 2 and r["status"] == "complete" and r["global_step"] == 3 for r in res)
    # Both workers report the same all-reduced loss; only the chief writes the model folder.
    assert res[0]["loss"] == pytest.approx(res[1]["loss"], rel=1e-5)
    assert (tmp_path / "out0" / "model.weights.h5").is_file() and (tmp_path / "out0" / "history.csv").is_file()
    assert not (tmp_path / "out1").exists()
