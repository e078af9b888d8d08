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
from landmark_kaggle.errors import UserError
from landmark_kaggle.train.distribute import (
    auto_precision,
    get_strategy,
    global_batch,
    resolve_precision,
    setup_runtime,
    steps_per_execution,
    strategy_kind,
    use_xla,
)

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


def test_precision_xla_and_strategy_follow_the_device_facts():
    # precision=auto: bf16 on TPUs and on GPUs of compute capability >= 8.0, float16 (+ loss scaling) below.
    assert auto_precision("tpu") == "mixed_bfloat16"
    assert auto_precision("gpu", [(7, 5), (7, 5)]) == "mixed_float16"  # Kaggle's T4 x2
    assert auto_precision("gpu", [(8, 0)]) == "mixed_bfloat16"  # A100
    assert auto_precision("gpu", [(8, 9)]) == "mixed_bfloat16" and auto_precision("gpu", [(9, 0)]) == "mixed_bfloat16"
    assert auto_precision("gpu", [(8, 6), (7, 5)]) == "mixed_float16"  # the slowest card decides
    assert auto_precision("gpu", []) == "mixed_float16"  # capability unknown: the precision every GPU runs
    assert auto_precision("cpu") == "float32"
    assert resolve_precision("auto", "gpu", [(9, 0)]) == "mixed_bfloat16"
    assert resolve_precision("float32", "gpu", [(9, 0)]) == "float32"
    # XLA: on for GPUs and TPUs under TensorFlow, always under JAX, off for TensorFlow on the CPU.
    assert use_xla("tensorflow", "gpu") and use_xla("tensorflow", "tpu")
    assert use_xla("jax", "cpu") and use_xla("jax", "gpu") and not use_xla("tensorflow", "cpu")
    # Both T4s of "GPU T4 x2": MirroredStrategy; one GPU: the default strategy on it.
    assert strategy_kind("auto", tpu=False, cluster=False, gpus=2) == "mirrored"
    assert strategy_kind("auto", tpu=False, cluster=False, gpus=1) == "gpu"
    assert strategy_kind("auto", tpu=False, cluster=False, gpus=0) == "cpu"
    assert strategy_kind("auto", tpu=True, cluster=False, gpus=0) == "tpu"
    assert strategy_kind("auto", tpu=False, cluster=True, gpus=2) == "multiworker"
    with pytest.raises(UserError, match="no TPU"):
        strategy_kind("tpu", tpu=False, cluster=False, gpus=2)


def test_this_cpu_runtime_compiles_without_xla_and_a_required_accelerator_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    try:
        rt = setup_runtime("auto", "auto")
        assert (rt.platform, rt.precision, rt.jit_compile) == ("cpu", "float32", False)
        with pytest.raises(UserError, match="no TPU or GPU found"):
            setup_runtime("auto", "auto", require_accelerator=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_global_batch_and_learning_rate_scale_with_replicas():
    cfg = config_from_dict({}, ["train.batch_size=16"])
    assert global_batch(cfg, 8) == (16, 1.0)
    scaled = config_from_dict({}, ["train.batch_size=16", "train.scale_batch_with_replicas=true"])
    assert global_batch(scaled, 8) == (128, pytest.approx(8 ** 0.5))  # the square-root rule (AdamW)
    with pytest.raises(UserError, match="split evenly"):
        global_batch(config_from_dict({}, ["train.batch_size=6"]), 4)


def test_mixed_float16_wraps_adamw_in_a_loss_scale_optimizer():
    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.optim import compile_model

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
    from landmark_kaggle.train.distribute import setup_runtime, split_cpu
    split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.optim import compile_model
    from landmark_kaggle.train.loop import train_model

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
    from landmark_kaggle.model.network import load_model_dir
    from landmark_kaggle.train.optim import make_loss, topk_metrics
    from landmark_kaggle.data.pipeline import build_dataset
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


# One multi-worker training run through the trainer; the worker saves every variable of the model it trained
# (trainable weights and BatchNorm moving statistics) as weights_chief.npz or weights_other.npz. The trainer's
# ``run`` is wrapped, not replaced, only to keep the trained model: a non-chief worker writes no model folder.
WORKER = textwrap.dedent("""
    import json
    import numpy as np
    from landmark_kaggle.train import loop as train
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.train.distribute import setup_runtime

    rt = setup_runtime("multiworker", "float32")
    kept = []
    run = train._Trainer.run

    def run_and_keep(self, resume):
        summary = run(self, resume)
        kept.append(self.model)
        return summary

    train._Trainer.run = run_and_keep
    cfg = config_from_dict({{}}, [*{SMALL!r}, *{MW!r}])
    role = "chief" if rt.is_chief else "other"
    s = train.train_model({shards!r}, {out!r} + "/" + role, cfg, runtime=rt, progress=False)
    weights = {{v.path: np.asarray(v.numpy()) for v in kept[0].variables}}
    np.savez({out!r} + f"/weights_{{role}}.npz", **weights)
    print(json.dumps({{"chief": rt.is_chief, "replicas": rt.replicas, "status": s["status"],
                      "global_step": s["global_step"], "loss": s["history"][0]["loss"]}}))
""")
MW = ["runtime.strategy=multiworker", "train.epochs=1", "train.steps_per_epoch=3", "session.checkpoint_every_steps=2"]


def _replicas_by_hand(shards, cfg, steps, replicas=2, sync_at=()):
    """What ``replicas`` replicas must compute on the trainer's first ``steps`` global batches of 8, written out
    here in one process.

    Each replica takes its slice of the global batch (with two: the first 4 images, the last 4), normalises it
    with its own batch statistics and updates its own copy of BatchNorm's moving statistics (Keras 3 does not
    aggregate them); the gradients of the slices' mean losses, each scaled by 1/replicas, are summed (the
    all-reduce) and AdamW applies them once. After each global step in ``sync_at`` every copy of the moving
    statistics becomes the mean of the copies (``Runtime.sync``: the trainer's checkpoints and epoch ends).
    ``replicas=1`` is plain training on the whole batch. Returns the starting weights and each replica's.
    """
    import tensorflow as tf

    from landmark_kaggle.data.pipeline import build_dataset
    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.optim import compile_model

    keras.utils.set_random_seed(cfg.train.seed)
    model = build_model(cfg, 4)
    compile_model(model, cfg, steps_per_epoch=cfg.train.steps_per_epoch)
    init = {v.path: v.numpy() for v in model.variables}
    moving = [v for v in model.non_trainable_variables if "moving_" in v.path]
    stats = [[v.numpy() for v in moving] for _ in range(replicas)]
    per = 8 // replicas
    # The trainer's stream for epoch 1 (train.py seeds each epoch's stream with seed * 100_003 + epoch).
    batches = build_dataset(str(shards), "train", cfg.data, 8, training=True, seed=cfg.train.seed * 100_003)
    for step, (images, labels) in enumerate(batches.take(steps), start=1):
        total = None
        for r in range(replicas):
            part = slice(r * per, (r + 1) * per)
            for v, value in zip(moving, stats[r], strict=True):
                v.assign(value)
            with tf.GradientTape() as tape:
                loss = model.loss(labels[part], model(images[part], training=True)) / replicas
            grads = tape.gradient(loss, model.trainable_variables)
            stats[r] = [v.numpy() for v in moving]
            total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
        model.optimizer.apply_gradients(zip(total, model.trainable_variables, strict=True))
        if step in sync_at:
            stats = [[np.mean(copies, axis=0) for copies in zip(*stats, strict=True)]] * replicas
    weights = {v.path: v.numpy() for v in model.variables}
    return init, [{**weights, **{v.path: value for v, value in zip(moving, stats[r], strict=True)}}
                  for r in range(replicas)]


def _held_ports(n):
    """``n`` ports on 127.0.0.1, bound here and held open (not listening) while the workers start.

    SO_REUSEPORT on both sides lets a worker's gRPC server bind a held port (TF_GRPC_REUSE_PORT=1 in its
    environment), while anything else that asks for a port (a bind, or the kernel choosing one for an
    outgoing connection) cannot take it in between, as it could if the ports were closed before the workers
    started. Close the sockets once the workers are done.
    """
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    return socks, [s.getsockname()[1] for s in socks]


@pytest.mark.slow
def test_two_workers_train_the_weights_two_replicas_must_on_the_same_global_batches(shards, tmp_path):
    """Two MultiWorkerMirroredStrategy workers (TF_CONFIG on 127.0.0.1), the backbone trainable, against the
    same 3 global batches of 8 computed by hand in this one process: every variable is compared, BatchNorm's
    moving statistics too.

    Two workers that did not exchange gradients would each follow their own half-batches (and differ from
    each other); training on whole batches (BatchNorm over 8 images, not 4) is computed too and must not match.
    """
    held, ports = _held_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    scripts, envs = [], []
    for i in range(2):
        scripts.append(WORKER.format(SMALL=SMALL, MW=MW, shards=str(shards), out=str(tmp_path)))
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        envs.append(_env(TF_CONFIG=json.dumps(tf_config), TF_GRPC_REUSE_PORT="1"))
    try:
        res = _run_children(scripts, envs)
    finally:
        for sock in held:
            sock.close()
    assert [r["chief"] for r in res] == [True, False]
    assert all(r["replicas"] == 2 and r["status"] == "complete" and r["global_step"] == 3 for r in res)
    assert res[0]["loss"] == res[1]["loss"]
    # Only the chief writes the model folder.
    assert (tmp_path / "chief" / "model.weights.h5").is_file() and (tmp_path / "chief" / "history.csv").is_file()
    assert not (tmp_path / "other").exists()

    cfg = config_from_dict({}, [*SMALL, *MW])
    # The trainer syncs the moving statistics at its checkpoint (step 2 of 3) and at the end of the epoch.
    init, (by_hand, _) = _replicas_by_hand(shards, cfg, steps=3, sync_at=(2, 3))
    _, (whole,) = _replicas_by_hand(shards, cfg, steps=3, replicas=1)
    trainable = [k for k in init if "moving_" not in k]
    moving = [k for k in init if "moving_" in k]
    workers = []
    for role in ("chief", "other"):
        with np.load(tmp_path / f"weights_{role}.npz") as z:
            workers.append({k: z[k] for k in z.files})
    # All-reduced gradients and all-reduced statistics: the two workers hold the same numbers.
    assert workers[0].keys() == workers[1].keys() == by_hand.keys()
    assert all(np.array_equal(workers[0][k], workers[1][k]) for k in by_hand)
    gaps = [_relative_gap(workers[0], x, init, keys) for x in (by_hand, whole) for keys in (trainable, moving)]
    print(f"workers vs two replicas by hand: {gaps[0]:.3g} (trainable), {gaps[1]:.3g} (moving statistics); "
          f"vs whole batches on one device: {gaps[2]:.3g}, {gaps[3]:.3g}")
    # The gap as a share of how far the weights moved from the start. Float round-off (another summation
    # order in the all-reduce and the convolutions) is all that may differ; AdamW's first steps divide
    # by sqrt(v) + epsilon, which magnifies it where a gradient is near zero, hence 1% and not 1e-6.
    assert gaps[0] < 0.01 and gaps[1] < 0.01
    # Whole batches on one device (BatchNorm over 8 images, not 4) land far away: the test can tell.
    assert gaps[2] > 0.3
    moved = max(float(np.abs(by_hand[k] - init[k]).max()) for k in trainable)
    assert moved > 2e-3  # ~lr per step: not a trivial match


def _relative_gap(got, want, init, keys):
    """||got - want|| / ||want - init|| over the variables ``keys``: the gap as a share of the movement."""
    gap = np.sqrt(sum(float(((got[k] - want[k]) ** 2).sum()) for k in keys))
    return gap / np.sqrt(sum(float(((want[k] - init[k]) ** 2).sum()) for k in keys))


def test_steps_per_execution_ends_calls_at_epochs_checkpoints_and_the_resume_point():
    # auto: 32 steps a call on a TPU, 1 elsewhere; an explicit count wins.
    assert steps_per_execution(0, "tpu") == 32 and steps_per_execution(0, "gpu") == 1
    assert steps_per_execution(0, "cpu", 96) == 1 and steps_per_execution(8, "cpu", 96) == 8
    # Lowered to the largest count dividing the epoch (96), the checkpoint interval (40) and a resumed start (12).
    assert steps_per_execution(0, "tpu", 96) == 32
    assert steps_per_execution(0, "tpu", 96, 40) == 8
    assert steps_per_execution(0, "tpu", 96, 40, 12) == 4
    assert steps_per_execution(0, "tpu", 96, 0, 0) == 32  # no checkpoints, a fresh epoch: nothing to meet
    assert steps_per_execution(0, "tpu", 7) == 7 and steps_per_execution(0, "tpu", 37) == 1
