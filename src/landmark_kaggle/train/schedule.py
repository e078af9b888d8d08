"""The learning-rate schedule of the poster's Figure 7: warm-up, sustain, then decay, stepped by epoch.

The same shape as the Kaggle TPU notebooks the poster resembles: a linear
ramp from ``start_lr`` to ``peak_lr`` over the warm-up epochs, ``peak_lr`` for
the sustain epochs, then exponential (``decay_rate`` per epoch) or cosine decay
towards ``min_lr``. The rate changes at epoch boundaries only, so a run resumed
mid-epoch gets exactly the rate it would have had. ``lr_at_epoch`` is the same
formula in numpy, for plots and tests.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


def lr_at_epoch(epoch, *, peak_lr, warmup_epochs=1, sustain_epochs=0, decay="exponential", decay_rate=0.8,
                total_epochs=15, start_lr=1e-6, min_lr=1e-6):
    """Learning rate during (0-based) ``epoch``; ``epoch`` may be a numpy array."""
    e = np.asarray(epoch, dtype=np.float64)
    ramp = start_lr + (peak_lr - start_lr) * e / max(warmup_epochs, 1)
    after = np.maximum(e - warmup_epochs - sustain_epochs, 0.0)
    if decay == "cosine":
        span = max(total_epochs - warmup_epochs - sustain_epochs, 1)
        decayed = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * np.minimum(after / span, 1.0)))
    else:
        decayed = min_lr + (peak_lr - min_lr) * decay_rate ** after
    return np.where(e < warmup_epochs, ramp, np.where(e < warmup_epochs + sustain_epochs, peak_lr, decayed))


@keras.saving.register_keras_serializable(package="landmark_kaggle")
class WarmupSustainDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr_at_epoch(step // steps_per_epoch)`` as a serialisable Keras schedule."""

    def __init__(self, peak_lr, steps_per_epoch, warmup_epochs=1, sustain_epochs=0, decay="exponential",
                 decay_rate=0.8, total_epochs=15, start_lr=1e-6, min_lr=1e-6, name="warmup_sustain_decay"):
        super().__init__()
        if decay not in ("exponential", "cosine"):
            raise ValueError(f"decay must be 'exponential' or 'cosine', got {decay!r}")
        self.peak_lr = peak_lr
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = warmup_epochs
        self.sustain_epochs = sustain_epochs
        self.decay = decay
        self.decay_rate = decay_rate
        self.total_epochs = total_epochs
        self.start_lr = start_lr
        self.min_lr = min_lr
        self.name = name

    def __call__(self, step):
        e = ops.floor(ops.divide(ops.cast(step, "float32"), float(max(self.steps_per_epoch, 1))))
        warm = float(self.warmup_epochs)
        ramp = self.start_lr + (self.peak_lr - self.start_lr) * e / max(warm, 1.0)
        after = ops.maximum(e - warm - float(self.sustain_epochs), 0.0)
        if self.decay == "cosine":
            span = float(max(self.total_epochs - self.warmup_epochs - self.sustain_epochs, 1))
            frac = ops.minimum(after / span, 1.0)
            decayed = self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * frac))
        else:
            decayed = self.min_lr + (self.peak_lr - self.min_lr) * ops.power(float(self.decay_rate), after)
        lr = ops.where(e < warm, ramp, ops.where(e < warm + float(self.sustain_epochs), self.peak_lr, decayed))
        return ops.cast(lr, "float32")

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "sustain_epochs": self.sustain_epochs,
            "decay": self.decay,
            "decay_rate": self.decay_rate,
            "total_epochs": self.total_epochs,
            "start_lr": self.start_lr,
            "min_lr": self.min_lr,
            "name": self.name,
        }

    def by_epoch(self, epochs):
        """The rate of each epoch in ``epochs`` (numpy), for the Figure 7 plot."""
        return lr_at_epoch(np.asarray(epochs), peak_lr=self.peak_lr, warmup_epochs=self.warmup_epochs,
                           sustain_epochs=self.sustain_epochs, decay=self.decay, decay_rate=self.decay_rate,
                           total_epochs=self.total_epochs, start_lr=self.start_lr, min_lr=self.min_lr)


def schedule_from_config(cfg, steps_per_epoch, lr_factor=1.0):
    """The schedule a ``Config`` asks for (``optim`` section, ``train.epochs``); ``lr_factor`` is the
    linear-scaling factor of the global batch."""
    o = cfg.optim
    return WarmupSustainDecay(peak_lr=o.learning_rate * lr_factor, steps_per_epoch=steps_per_epoch,
                              warmup_epochs=o.warmup_epochs, sustain_epochs=o.sustain_epochs, decay=o.decay,
                              decay_rate=o.decay_rate, total_epochs=cfg.train.epochs, start_lr=o.min_lr,
                              min_lr=o.min_lr)
