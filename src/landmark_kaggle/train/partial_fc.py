"""Partial FC (An et al. 2021): the ArcFace loss over a sampled subset of the classes, for training only.

With 81,313 classes the full cosine classifier and its softmax cost ~160×
the rest of the embedding-only model on every step. Partial FC computes, on
each step, the cosine logits only against K of the C class centres: every
class that has a sample in the batch (so every positive is kept) plus
uniformly drawn negatives, K = max(⌈rate·C⌉, batch) columns. The labels are
remapped to their position in that subset and the usual ArcFace margin (one
scalar, or the dynamic margin of each sampled class) is applied to the target;
with sub-centres all k centres of a sampled class are taken. The paper shows a
rate of 0.1 matching the full softmax. Only the training step changes: the
model that is validated and saved is the plain functional model with its full
``CosineClassifier`` (``s·cos θ`` over all classes, no label input).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from landmark_kaggle.model.layers import arcface_logits

# Below this many classes the full softmax is cheap enough that sampling buys nothing.
AUTO_MIN_CLASSES = 20_000
AUTO_RATE = 0.1


def resolve_rate(rate: float, num_classes: int) -> float:
    """``embeddings.class_sample`` → the sample rate used: 0 ("auto") is 0.1 above 20,000 classes, else 1.0."""
    if rate > 0:
        return float(rate)
    return AUTO_RATE if num_classes > AUTO_MIN_CLASSES else 1.0


def sample_size(num_classes: int, rate: float, batch_size: int) -> int:
    """K, the classes a step sees: ⌈rate·C⌉, but never fewer than the batch (so every label fits) nor more than C."""
    return int(min(num_classes, max(math.ceil(rate * num_classes), batch_size)))


def sample_classes(labels, num_classes: int, k: int, seed=None):
    """K distinct classes (ascending) holding every label in ``labels``, and each label's position among them.

    Every class draws a uniform score in [0, 1); the batch's classes are lifted
    to 2 so ``top_k`` always keeps them and fills the rest at random. The
    shapes are static (K, and the batch), so the step traces once.
    """
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
    scores = keras.random.uniform((num_classes,), seed=seed)
    scores = tf.tensor_scatter_nd_update(scores, labels[:, None], tf.fill(tf.shape(labels), 2.0))
    classes = tf.sort(tf.math.top_k(scores, k, sorted=False).indices)
    position = tf.scatter_nd(classes[:, None], tf.range(k, dtype=tf.int32), (num_classes,))
    return classes, tf.gather(position, labels)


def subset_cosine(embeddings, kernel, classes, subcenters: int = 1):
    """``cos θ`` of each row against the sampled classes only; the same numbers ``CosineClassifier.cosine`` gives.

    The kernel's columns are class-major (class c's centres are c·k … c·k+k−1),
    so with sub-centres each sampled class brings all k of its columns.
    """
    if subcenters > 1:
        columns = tf.reshape(classes[:, None] * subcenters + tf.range(subcenters, dtype=classes.dtype), (-1,))
    else:
        columns = classes
    w = ops.normalize(tf.gather(kernel, columns, axis=1), axis=0, order=2)
    cos = ops.matmul(ops.normalize(embeddings, axis=-1, order=2), w)
    if subcenters > 1:
        cos = ops.max(ops.reshape(cos, (-1, ops.shape(classes)[0], subcenters)), axis=-1)
    return ops.clip(cos, -1.0, 1.0)


def partial_fc_loss(embeddings, kernel, classes, local_labels, *, scale: float, margin=0.5,
                    margins=None, easy_margin: bool = False, subcenters: int = 1):
    """Per-row ArcFace cross-entropy over the sampled classes; ``margins`` (one per class) overrides ``margin``.

    With every class sampled (K = C, classes = 0..C−1) this is exactly
    ``ArcFaceLoss`` on the full classifier's logits.
    """
    cos = subset_cosine(embeddings, kernel, classes, subcenters)
    m = margin if margins is None else tf.gather(margins, classes)
    logits = arcface_logits(local_labels, cos * scale, scale, m, easy_margin)
    return keras.losses.sparse_categorical_crossentropy(local_labels, logits, from_logits=True)


class PartialFCTrainer(keras.Model):
    """Trains ``model`` (input → … → ``embedding`` → ``logits``) with the Partial FC loss.

    ``call`` is the wrapped model's full forward, so validation (``test_step``)
    and ``predict`` see every class's logit, and compiled metrics are top-k over
    all classes. Only ``train_step`` samples, and it reports the training loss
    alone: top-k over K sampled logits would measure nothing. Save
    ``trainer.network``, never the trainer; TensorFlow backend only.
    """

    def __init__(self, model, *, num_sampled: int, scale: float, margin: float = 0.5, margins=None,
                 easy_margin: bool = False, seed: int | None = None, embedding_layer: str = "embedding",
                 logits_layer: str = "logits", **kwargs):
        super().__init__(name=kwargs.pop("name", "partial_fc_trainer"), **kwargs)
        self.network = model
        self.body = keras.Model(model.inputs, model.get_layer(embedding_layer).output, name="body")
        self.head = model.get_layer(logits_layer)
        self.num_sampled = int(num_sampled)
        self.scale = float(scale)
        self.margin = float(margin)
        self.margins = None if margins is None else np.asarray(margins, dtype=np.float32)
        self.easy_margin = bool(easy_margin)
        self.sampler = keras.random.SeedGenerator(seed)
        self.built = True  # the wrapped model is; BackupAndRestore refuses to restore into an unbuilt model

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        head = self.head
        classes, local = sample_classes(y, head.num_classes, self.num_sampled, seed=self.sampler)
        margins = None if self.margins is None else tf.constant(self.margins)
        with tf.GradientTape() as tape:
            embeddings = self.body(x, training=True)
            per_row = partial_fc_loss(embeddings, head.kernel, classes, local, scale=self.scale,
                                      margin=self.margin, margins=margins, easy_margin=self.easy_margin,
                                      subcenters=head.subcenters)
            if sample_weight is not None:
                per_row = per_row * tf.cast(tf.reshape(sample_weight, (-1,)), per_row.dtype)
            loss = tf.reduce_mean(per_row)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        return {"loss": self._loss_tracker.result()}

    def get_metrics_result(self):
        # Only validation feeds the compiled top-k metrics; before the first validation they are unbuilt
        # and Keras' epoch-end bookkeeping would fail asking them for a result.
        results = {}
        for metric in self.metrics:
            if getattr(metric, "built", True):
                result = metric.result()
                results.update(result if isinstance(result, dict) else {metric.name: result})
        return results
