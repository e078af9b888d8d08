"""Partial FC for train-embeddings: the class sample, the remapped labels, the subset ArcFace loss, training, saving."""

import math
import re

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from landmark_kaggle.config import ConfigError, config_from_dict
from landmark_kaggle.data.embstore import StoreWriter
from landmark_kaggle.model.layers import ArcFaceLoss, CosineClassifier, dynamic_margins
from landmark_kaggle.model.network import build_embedding_model, load_model_dir, save_model_dir
from landmark_kaggle.train.embeddings import make_trainer, train_on_embeddings
from landmark_kaggle.train.partial_fc import (
    PartialFCTrainer,
    partial_fc_loss,
    resolve_rate,
    sample_classes,
    sample_size,
    subset_cosine,
)

SCALE = 16.0


def numpy_arcface(cos, labels, margins, scale=SCALE):
    """ArcFace cross-entropy per row, written out: the target's cos θ becomes cos(θ + m), or cos θ − m·sin m past π."""
    cos = np.clip(np.asarray(cos, np.float64), -1 + 1e-6, 1 - 1e-6)
    rows = np.arange(len(labels))
    t = cos[rows, labels]
    m = np.broadcast_to(np.asarray(margins, np.float64), t.shape)
    phi = np.where(np.arccos(t) + m < math.pi, np.cos(np.arccos(t) + m), t - np.sin(math.pi - m) * m)
    logits = scale * cos
    logits[rows, labels] = scale * phi
    top = logits.max(axis=1, keepdims=True)
    return (np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]) - logits[rows, labels]


def head_and_batch(num_classes, subcenters=1, dim=12, batch=10, seed=0):
    rng = np.random.default_rng(seed)
    head = CosineClassifier(num_classes, subcenters=subcenters, scale=SCALE)
    head.build((None, dim))
    emb = rng.normal(size=(batch, dim)).astype("float32")
    labels = rng.integers(0, num_classes, batch).astype("int32")
    return head, emb, labels


def test_auto_rate_sample_size_and_config_validation():
    assert resolve_rate(0.0, 81_313) == 0.1 and resolve_rate(0.0, 20_000) == 1.0 and resolve_rate(0.25, 10) == 0.25
    assert sample_size(81_313, 0.1, 4096) == 8132  # ⌈8131.3⌉
    assert sample_size(81_313, 0.01, 4096) == 4096  # never fewer than the batch: every label must fit
    assert sample_size(100, 0.5, 512) == 100 and sample_size(100, 1.0, 4) == 100
    assert config_from_dict({}, ["embeddings.class_sample=0.3"]).embeddings.class_sample == 0.3
    assert config_from_dict({}).embeddings.class_sample == 0.0
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"embeddings.class_sample = .* must be in \[0, 1\]"):
            config_from_dict({}, [f"embeddings.class_sample={bad}"])


def test_the_sample_holds_every_batch_label_k_distinct_classes_and_fresh_negatives():
    labels = tf.constant([3, 3, 97, 0, 41, 41, 41, 12], tf.int32)
    gen = keras.random.SeedGenerator(7)
    draws = []
    for _ in range(20):
        classes, local = (t.numpy() for t in sample_classes(labels, 100, 15, seed=gen))
        assert classes.shape == (15,) and len(np.unique(classes)) == 15 and np.all(np.diff(classes) > 0)
        assert classes.min() >= 0 and classes.max() < 100
        np.testing.assert_array_equal(classes[local], labels.numpy())  # each label's position points at it
        draws.append(frozenset(classes) - {0, 3, 12, 41, 97})
    assert len(set(draws)) > 15  # the 10 negatives are redrawn every step
    # Exactly as many slots as distinct labels: no room for a negative, none of the labels dropped.
    classes, local = sample_classes(labels, 100, 5, seed=gen)
    np.testing.assert_array_equal(classes.numpy(), [0, 3, 12, 41, 97])
    np.testing.assert_array_equal(local.numpy(), [1, 1, 4, 0, 3, 3, 3, 2])
    # K = C: every class, in order, and the labels unchanged.
    classes, local = sample_classes(labels, 100, 100, seed=gen)
    np.testing.assert_array_equal(classes.numpy(), np.arange(100))
    np.testing.assert_array_equal(local.numpy(), labels.numpy())


@pytest.mark.parametrize("subcenters", [1, 3])
def test_subset_logits_are_the_full_classifiers_logits_of_the_sampled_classes(subcenters):
    head, emb, labels = head_and_batch(40, subcenters=subcenters)
    full = keras.ops.convert_to_numpy(head(emb))
    classes, local = sample_classes(labels, 40, 16, seed=3)
    sub = SCALE * subset_cosine(emb, head.kernel, classes, subcenters).numpy()
    assert sub.shape == (10, 16)
    np.testing.assert_allclose(sub, full[:, classes.numpy()], rtol=1e-5, atol=1e-5)
    rows = np.arange(10)
    np.testing.assert_allclose(sub[rows, local.numpy()], full[rows, labels], rtol=1e-5, atol=1e-5)
    if subcenters > 1:  # each class's logit is the max over its own k columns, taken from the raw kernel
        w = head.kernel.numpy() / np.linalg.norm(head.kernel.numpy(), axis=0)
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        by_centre = (x @ w).reshape(10, 40, subcenters)
        np.testing.assert_allclose(sub, SCALE * by_centre.max(-1)[:, classes.numpy()], rtol=1e-5, atol=1e-5)


def test_sampling_every_class_gives_the_full_arcface_loss():
    head, emb, labels = head_and_batch(30)
    classes, local = sample_classes(labels, 30, 30, seed=0)
    per_row = partial_fc_loss(emb, head.kernel, classes, local, scale=SCALE, margin=0.4).numpy()
    full = float(ArcFaceLoss(scale=SCALE, margin=0.4)(labels, head(emb)))
    assert per_row.mean() == pytest.approx(full, rel=1e-5)
    cos = keras.ops.convert_to_numpy(head(emb)) / SCALE
    np.testing.assert_allclose(per_row, numpy_arcface(cos, labels, 0.4), rtol=1e-4)


@pytest.mark.parametrize("subcenters", [1, 2])
def test_sampled_loss_takes_each_rows_own_class_margin_over_the_subset(subcenters):
    head, emb, labels = head_and_batch(50, subcenters=subcenters, seed=1)
    counts = np.arange(1, 51) ** 2  # 50 different sizes → 50 different margins
    margins = dynamic_margins(counts, 0.05, 0.5)
    classes, local = sample_classes(labels, 50, 12, seed=5)
    per_row = partial_fc_loss(emb, head.kernel, classes, local, scale=SCALE,
                              margins=tf.constant(margins), subcenters=subcenters).numpy()
    cos = keras.ops.convert_to_numpy(head(emb))[:, classes.numpy()] / SCALE
    np.testing.assert_allclose(per_row, numpy_arcface(cos, local.numpy(), margins[labels]), rtol=1e-4)
    # The margin by position in the subset instead of by class would give another loss.
    wrong = numpy_arcface(cos, local.numpy(), margins[local.numpy()])
    assert not np.allclose(per_row, wrong, rtol=1e-3)


def clustered(num_classes, per_class, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + 0.4 * rng.normal(size=(len(labels), dim))
    return x.astype("float32"), labels.astype("int64")


def test_partial_fc_trainer_learns_and_its_model_reloads_plain_with_the_same_logits(tmp_path):
    cfg = config_from_dict({}, ["train.epochs=6", "optim.warmup_epochs=0", "optim.learning_rate=0.01",
                                "model.embedding_dim=32", "model.dropout=0", "model.scale=16",
                                "embeddings.class_sample=0.2", "model.dynamic_margin=true"])
    x, y = clustered(60, 12, 24)
    keras.utils.set_random_seed(0)
    model = build_embedding_model(cfg, 24, 60)
    trainer, k = make_trainer(model, cfg, np.bincount(y), steps_per_epoch=19, batch_size=32)
    assert isinstance(trainer, PartialFCTrainer) and k == 32  # max(⌈0.2·60⌉, batch)
    val = np.arange(len(y)) % 6 == 0
    hist = trainer.fit(x[~val], y[~val], batch_size=32, epochs=6, validation_data=(x[val], y[val]), verbose=0)
    h = hist.history
    assert set(h) == {"loss", "val_loss", "val_top1", "val_top10", "val_top100", "val_top1000"}
    assert h["loss"][-1] < 0.5 * h["loss"][0] and h["val_top1"][-1] >= 0.8  # chance is 1/60
    assert trainer.optimizer.iterations.numpy() == 6 * 19  # ⌈600 / 32⌉ steps an epoch
    label_map = pd.DataFrame({"label": np.arange(60), "landmark_id": np.arange(60) + 7, "count": np.bincount(y)})
    save_model_dir(model, cfg, label_map, tmp_path / "m")
    # Rebuilt from config.json (the embedding network and its input width) with the weights file read into it.
    loaded = load_model_dir(tmp_path / "m").model
    assert type(loaded).__name__ == "Functional" and loaded.name == "landmark_embedding_arcface"
    assert getattr(loaded, "optimizer", None) is None
    assert [type(la).__name__ for la in loaded.layers] == ["InputLayer", "Dense", "BatchNormalization", "Dropout",
                                                           "Identity", "CosineClassifier"]
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    np.testing.assert_array_equal(loaded.predict(x[val], verbose=0), model.predict(x[val], verbose=0))
    assert loaded.output_shape == (None, 60) and not (tmp_path / "m" / "model.keras").exists()


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def test_backup_and_restore_resumes_a_partial_fc_run(tmp_path):
    cfg = config_from_dict({}, ["optim.warmup_epochs=0", "optim.learning_rate=0.01", "model.embedding_dim=16",
                                "model.dropout=0", "embeddings.class_sample=0.25"])
    x, y = clustered(40, 8, 16, seed=2)

    def fit(extra):
        keras.utils.set_random_seed(1)
        trainer, _ = make_trainer(build_embedding_model(cfg, 16, 40), cfg, steps_per_epoch=20, batch_size=16)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "ckpt"))
        return trainer, trainer.fit(x, y, batch_size=16, epochs=5, callbacks=[backup, *extra], verbose=0)

    with pytest.raises(KeyboardInterrupt):
        fit([StopAfter(3)])
    trainer, hist = fit([])
    assert len(hist.history["loss"]) == 2  # epochs 4 and 5 only
    assert trainer.optimizer.iterations.numpy() == 5 * 20  # AdamW's step count came back with the weights
    fresh = make_trainer(build_embedding_model(cfg, 16, 40), cfg, steps_per_epoch=20, batch_size=16)[0]
    fresh_loss = float(fresh.evaluate(x, y, batch_size=64, verbose=0)[0])
    assert hist.history["loss"][0] < 0.5 * fresh_loss  # it went on from trained weights, not from scratch


def write_gld(root, num_classes, per_class, dim):
    """A GLDv2 train.csv and a matching embeddings store of clustered vectors."""
    x, labels = clustered(num_classes, per_class, dim, seed=3)
    ids = np.array([f"{i:016x}" for i in range(len(labels))])
    (root / "gld").mkdir(parents=True)
    pd.DataFrame({"id": ids, "landmark_id": labels + 100}).to_csv(root / "gld" / "train.csv", index=False)
    writer = StoreWriter(root / "store", ids, {"backend": "test"}, dim=dim, chunk_size=256)
    for k in range(writer.num_chunks):
        writer.write_chunk(k, x[writer.chunk_rows(k)])
    writer.finalize()


def test_train_embeddings_samples_classes_and_writes_a_plain_model(tmp_path):
    write_gld(tmp_path, 80, 10, 24)
    cfg = config_from_dict({}, ["train.epochs=8", "train.batch_size=32", "optim.warmup_epochs=0",
                                "optim.learning_rate=0.01", "model.embedding_dim=32", "model.dropout=0",
                                "embeddings.class_sample=0.1"])
    s = train_on_embeddings(tmp_path / "store", tmp_path / "gld", tmp_path / "model", cfg, val_fraction=0.2,
                            progress=False)
    assert s["classes_per_step"] == 32 and s["num_classes"] == 80 and s["batch_size"] == 32
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert "top1" not in history and history["val_top1"].iloc[-1] >= 0.8  # chance is 1/80
    bundle = load_model_dir(tmp_path / "model")
    assert bundle.model.output_shape == (None, 80) and bundle.model.input_shape == (None, 24)


def test_cli_batch_size_defaults_to_4096_and_a_set_override_wins(tmp_path, capsys):
    from landmark_kaggle.cli import main

    write_gld(tmp_path, 30, 6, 8)
    common = ["train-embeddings", "--embeddings", str(tmp_path / "store"), "--data", str(tmp_path / "gld"),
              "--set", "train.epochs=1", "--set", "model.embedding_dim=8"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    trained = re.search(r"(\d+) train / \d+ validation", out).group(1)
    assert f"batch {trained}, softmax over 30 of 30 classes a step" in out  # 4096, capped at the data
    assert pd.read_json(tmp_path / "a" / "config.json", typ="series")["train"]["batch_size"] == 4096
    assert main([*common, "--out", str(tmp_path / "b"), "--batch-size", "16", "--set", "train.batch_size=8"]) == 0
    assert pd.read_json(tmp_path / "b" / "config.json", typ="series")["train"]["batch_size"] == 8
    assert main([*common, "--out", str(tmp_path / "c"), "--batch-size", "0"]) == 2
    assert "--batch-size 0 must be >= 1" in capsys.readouterr().err
