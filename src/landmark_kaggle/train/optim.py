"""What training adds to a model: the AdamW optimizer on the Figure 7 schedule, the ArcFace loss, top-k metrics.

``model/network.py`` only builds networks; every trainer (the image trainer, the
embedding-only trainer and its Partial FC step) compiles through
``compile_model`` here, so they share one optimizer, one loss and one set of
metrics.

Weight decay is decoupled (AdamW): each step multiplies a decayed weight by
``1 - lr * optim.weight_decay``, apart from the gradient step. It applies to
convolution and dense kernels only. Biases and normalisation parameters
(BatchNorm's γ and β: every trainable variable of rank <= 1, GeM's exponent too)
are left alone, as in the fine-tuning recipes the default 0.05 comes from:
shrinking them regularises nothing, it only moves the activations' scale. The
ArcFace class centres are left alone too: the cosine classifier normalises each
centre before use, so its length never reaches the logits, and decay would only
shrink the centres of rarely seen classes, making their next angular step larger.
"""

from __future__ import annotations

import keras

from landmark_kaggle.config import Config
from landmark_kaggle.errors import UserError
from landmark_kaggle.evaluate.metrics import TOP_K
from landmark_kaggle.model.layers import ArcFaceLoss, CosineClassifier, dynamic_margins
from landmark_kaggle.train.schedule import schedule_from_config


def make_loss(cfg: Config, class_counts=None) -> ArcFaceLoss:
    """ArcFace with the configured margin, or per-class dynamic margins from ``class_counts`` (label order)."""
    m = cfg.model
    margins = None
    if m.dynamic_margin:
        if class_counts is None:
            raise UserError("model.dynamic_margin needs class counts (label_map.csv's count column)")
        margins = dynamic_margins(class_counts, m.margin_min, m.margin_max)
    return ArcFaceLoss(scale=m.scale, margin=m.margin, margins=margins, easy_margin=m.easy_margin)


def _layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _layers(layer)


def decay_exclusions(model: keras.Model) -> list:
    """The trainable variables weight decay leaves alone: rank <= 1 (biases, BatchNorm γ/β, GeM p) and the
    cosine classifiers' class centres (see the module docstring)."""
    excluded = [v for v in model.trainable_variables if len(v.shape) <= 1]
    for layer in _layers(model):
        if isinstance(layer, CosineClassifier):
            excluded += list(layer.trainable_variables)
    return list({id(v): v for v in excluded}.values())


def make_optimizer(cfg: Config, steps_per_epoch: int, lr_factor: float = 1.0,
                   no_decay: list | tuple = ()) -> keras.optimizers.Optimizer:
    """AdamW on the configured schedule; ``no_decay`` are the variables weight decay skips."""
    o = cfg.optim
    opt = keras.optimizers.AdamW(learning_rate=schedule_from_config(cfg, steps_per_epoch, lr_factor),
                                 weight_decay=o.weight_decay, epsilon=o.epsilon,
                                 global_clipnorm=o.clipnorm or None)
    if no_decay:
        opt.exclude_from_weight_decay(var_list=list(no_decay))
    return opt


def topk_metrics(num_classes: int) -> list:
    # k beyond the class count is always 1.0 but keeps history columns the same for every dataset.
    return [keras.metrics.SparseTopKCategoricalAccuracy(k=min(k, num_classes), name=f"top{k}") for k in TOP_K]


def compile_model(model: keras.Model, cfg: Config, class_counts=None, *, steps_per_epoch: int = 1,
                  lr_factor: float = 1.0, num_classes: int | None = None, loss: ArcFaceLoss | None = None,
                  jit_compile: bool = False, steps_per_execution: int = 1) -> None:
    """Compile for training. ``num_classes`` defaults to the model's output width (a subclassed trainer
    may not know it); ``loss`` defaults to ``make_loss``; ``jit_compile`` and ``steps_per_execution`` as the
    runtime says (``distribute.Runtime``). Under a ``mixed_float16`` model Keras wraps the optimizer in a
    LossScaleOptimizer."""
    classes = int(num_classes or model.output_shape[-1])
    # Weighted, so the zero-weight rows that pad a distributed validation pass do not count.
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch, lr_factor, decay_exclusions(model)),
                  loss=loss or make_loss(cfg, class_counts), weighted_metrics=topk_metrics(classes),
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
