"""The learning-rate schedule of the poster's Figure 7, by optimizer step: warm-up, sustain, then decay.

A linear ramp from ``start_lr`` to ``peak_lr`` over ``warmup_epochs`` (a
fraction allowed), counted in optimizer steps, ``peak_lr`` for the sustain
epochs, then exponential decay (``decay_rate`` per epoch, applied a step at a
time) or cosine decay towards ``min_lr`` at the end of the last epoch. The rate
is a pure function of the optimizer's step count, so a run resumed mid-epoch
gets exactly the rate it would have had. ``lr_at_step`` is the same formula in
numpy, for plots, the history and tests.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


def _phases(steps_per_epoch, warmup_epochs, sustain_epochs, total_epochs) -> tuple[float, float, float, float]:
    """(steps per epoch, warm-up steps, warm-up + sustain steps, cosine span in steps), as floats."""
    spe = float(max(int(steps_per_epoch), 1))
    warm = float(round(warmup_epochs * spe))
    flat_end = warm + float(round(sustain_epochs * spe))
    span = max(float(total_epochs) * spe - flat_end, 1.0)
    return spe, warm, flat_end, span


def lr_at_step(step, *, steps_per_epoch, peak_lr, warmup_epochs=1.0, sustain_epochs=0, decay="exponential",
               decay_rate=0.8, total_epochs=15, start_lr=1e-6, min_lr=1e-6):
    """Learning rate of (0-based) optimizer ``step``; ``step`` may be a numpy array."""
    s = np.asarray(step, dtype=np.float64)
    spe, warm, flat_end, span = _phases(steps_per_epoch, warmup_epochs, sustain_epochs, total_epochs)
    ramp = start_lr + (peak_lr - start_lr) * s / max(warm, 1.0)
    after = np.maximum(s - flat_end, 0.0)
    if decay == "cosine":
        decayed = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * np.minimum(after / span, 1.0)))
    else:
        decayed = min_lr + (peak_lr - min_lr) * decay_rate ** (after / spe)
    return np.where(s < warm, ramp, np.where(s < flat_end, peak_lr, decayed))


@keras.saving.register_keras_serializable(package="landmark_kaggle")
class WarmupSustainDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr_at_step(step)`` as a serialisable Keras schedule."""

    def __init__(self, peak_lr, steps_per_epoch, warmup_epochs=1.0, sustain_epochs=0, decay="exponential",
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
        s = ops.cast(step, "float32")
        spe, warm, flat_end, span = _phases(self.steps_per_epoch, self.warmup_epochs, self.sustain_epochs,
                                            self.total_epochs)
        ramp = self.start_lr + (self.peak_lr - self.start_lr) * s / max(warm, 1.0)
        after = ops.maximum(s - flat_end, 0.0)
        if self.decay == "cosine":
            frac = ops.minimum(after / span, 1.0)
            decayed = self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * frac))
        else:
            decayed = self.min_lr + (self.peak_lr - self.min_lr) * ops.power(float(self.decay_rate), after / spe)
        lr = ops.where(s < warm, ramp, ops.where(s < flat_end, self.peak_lr, decayed))
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

    def at_step(self, steps):
        """The rate at each optimizer step of ``steps`` (numpy)."""
        return lr_at_step(np.asarray(steps), steps_per_epoch=self.steps_per_epoch, peak_lr=self.peak_lr,
                          warmup_epochs=self.warmup_epochs, sustain_epochs=self.sustain_epochs, decay=self.decay,
                          decay_rate=self.decay_rate, total_epochs=self.total_epochs, start_lr=self.start_lr,
                          min_lr=self.min_lr)

    def by_epoch(self, epochs):
        """The rate at (0-based, possibly fractional) epoch positions: ``epochs=2`` is the first step of the third
        epoch. The history's ``lr`` column and the learning-rate plot."""
        steps = np.floor(np.asarray(epochs, dtype=np.float64) * max(int(self.steps_per_epoch), 1))
        return self.at_step(steps)


def schedule_from_config(cfg, steps_per_epoch, lr_factor=1.0):
    """The schedule a ``Config`` asks for (``optim`` section, ``train.epochs``); ``lr_factor`` is the
    batch-scaling factor of the learning rate (``distribute.global_batch``)."""
    o = cfg.optim
    return WarmupSustainDecay(peak_lr=o.learning_rate * lr_factor, steps_per_epoch=steps_per_epoch,
                              warmup_epochs=o.warmup_epochs, sustain_epochs=o.sustain_epochs, decay=o.decay,
                              decay_rate=o.decay_rate, total_epochs=cfg.train.epochs, start_lr=o.min_lr,
                              min_lr=o.min_lr)
