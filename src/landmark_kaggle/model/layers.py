"""Custom Keras pieces of the recognition model: GeM pooling, the cosine classifier and the ArcFace loss.

The model outputs plain logits ``s·cos θ`` (no label input), so one saved
model serves training, metrics and inference; ArcFace's additive angular
margin is applied to the target class inside the loss. Everything is written
the way keras-hub writes layers (kwargs to the parent, one attribute per
argument, ``get_config`` extending the parent's) and registered, so a whole
model saved by Keras (checkpoints) reloads with no ``custom_objects``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

PACKAGE = "landmark_kaggle"
# Keeps acos/sqrt away from their infinite slopes at cos θ = ±1, also in bf16/fp16.
COS_EPS = 1e-6


@keras.saving.register_keras_serializable(package=PACKAGE)
class GeMPooling2D(keras.layers.Layer):
    """Generalised-mean pooling over height and width: ``(mean(x^p))^(1/p)``; p=1 is average pooling.

    Computed in float32 by default: under ``mixed_float16`` an activation of
    41 already overflows ``x^3`` (> 65,504) and the pooled feature becomes inf.
    """

    def __init__(self, p=3.0, trainable_p=False, epsilon=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.p = p
        self.trainable_p = trainable_p
        self.epsilon = epsilon

    def build(self, input_shape):
        self.p_weight = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.p),
                                        trainable=self.trainable_p)
        self.built = True

    def call(self, inputs):
        p = ops.cast(self.p_weight, inputs.dtype)
        x = ops.power(ops.maximum(inputs, ops.cast(self.epsilon, inputs.dtype)), p)
        x = ops.mean(x, axis=(1, 2))
        return ops.power(x, 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "trainable_p": self.trainable_p, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosineClassifier(keras.layers.Layer):
    """``scale · cos θ`` between the L2-normalised input and each class's L2-normalised centre(s).

    With ``subcenters`` k > 1 each class owns k centres and its cosine is the
    maximum over them (sub-center ArcFace), so a noisy image can sit near a
    minority centre without pulling the dominant one. Computed in float32 by
    default: bf16 logits over 81,313 classes are too coarse to rank.
    """

    def __init__(self, num_classes, subcenters=1, scale=30.0, kernel_initializer="glorot_uniform", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.scale = scale
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.num_classes * self.subcenters),
                                      initializer=self.kernel_initializer, trainable=True)
        self.built = True

    def cosine(self, inputs):
        x = ops.normalize(inputs, axis=-1, order=2)
        w = ops.normalize(self.kernel, axis=0, order=2)
        cos = ops.matmul(x, w)
        if self.subcenters > 1:
            cos = ops.max(ops.reshape(cos, (-1, self.num_classes, self.subcenters)), axis=-1)
        return ops.clip(cos, -1.0, 1.0)

    def call(self, inputs):
        return ops.multiply(self.cosine(inputs), ops.cast(self.scale, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "subcenters": self.subcenters,
            "scale": self.scale,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def dynamic_margins(counts, margin_min=0.05, margin_max=0.5, power=-0.25):
    """Per-class margins from class sizes (2020 GLR winner): ``m ∝ n^-1/4`` mapped onto [min, max].

    Rare classes get the large margin, frequent ones the small margin. Equal
    counts everywhere give ``margin_max`` for every class.
    """
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    w = n ** power
    span = w.max() - w.min()
    if span <= 0:
        return np.full(n.shape, margin_max, dtype=np.float32)
    return (margin_min + (margin_max - margin_min) * (w - w.min()) / span).astype(np.float32)


def arcface_logits(y_true, logits, scale, margin, easy_margin=False):
    """Replace each row's target logit ``s·cos θ`` by ``s·cos(θ + m)``; the other logits stay.

    ``margin`` is a scalar or a per-class vector (dynamic margins). Where
    θ + m would pass π, cos(θ + m) stops decreasing, so past the threshold the
    usual linear fallback ``cos θ − m·sin m`` keeps the target penalised
    (or, with ``easy_margin``, the margin is only applied where cos θ > 0).
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    cos = ops.clip(ops.divide(logits, scale), -1.0 + COS_EPS, 1.0 - COS_EPS)
    onehot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
    target = ops.sum(ops.multiply(cos, onehot), axis=-1)
    m = ops.convert_to_tensor(margin, dtype="float32")
    if len(m.shape) > 0:
        m = ops.take(m, labels)
    sin = ops.sqrt(ops.clip(1.0 - ops.square(target), COS_EPS, 1.0))
    phi = target * ops.cos(m) - sin * ops.sin(m)
    if easy_margin:
        phi = ops.where(target > 0.0, phi, target)
    else:
        phi = ops.where(target > ops.cos(math.pi - m), phi, target - ops.sin(math.pi - m) * m)
    adjusted = cos + ops.multiply(onehot, ops.expand_dims(phi - target, -1))
    return ops.multiply(adjusted, scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArcFaceLoss(keras.losses.Loss):
    """Additive angular margin loss (Deng et al. 2019) on ``s·cos θ`` logits and sparse labels.

    ``margins`` (one per class, e.g. from ``dynamic_margins``) overrides the
    scalar ``margin`` when given.
    """

    def __init__(self, scale=30.0, margin=0.5, margins=None, easy_margin=False, label_smoothing=0.0,
                 name="arcface", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale = scale
        self.margin = margin
        self.margins = None if margins is None else [float(v) for v in np.asarray(margins).ravel()]
        self.easy_margin = easy_margin
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        margin = self.margin if self.margins is None else np.asarray(self.margins, dtype=np.float32)
        logits = arcface_logits(y_true, y_pred, self.scale, margin, self.easy_margin)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        if self.label_smoothing:
            target = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
            return keras.losses.categorical_crossentropy(target, logits, from_logits=True,
                                                         label_smoothing=self.label_smoothing)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def get_config(self):
        config = super().get_config()
        config.update({
            "scale": self.scale,
            "margin": self.margin,
            "margins": self.margins,
            "easy_margin": self.easy_margin,
            "label_smoothing": self.label_smoothing,
        })
        return config
