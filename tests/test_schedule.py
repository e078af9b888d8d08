"""The warm-up / sustain / decay schedule by optimizer step (poster Figure 7) against hand-computed values.

Its config round trip, reload and mixed-precision checks: the harness in test_layers.py.
"""

import math

import keras
import numpy as np
import pytest

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.train.distribute import global_batch
from landmark_kaggle.train.plots import lr_curve
from landmark_kaggle.train.schedule import WarmupSustainDecay, lr_at_step, schedule_from_config


def test_warmup_is_a_ramp_by_step_over_a_fraction_of_an_epoch_then_sustain_then_exponential_decay():
    # 10 steps an epoch, warm-up 1.5 epochs = 15 steps from 0 to 1e-3, sustain 1 epoch (steps 15..24),
    # then x0.5 per epoch, a step at a time, towards min 1e-5.
    sched = WarmupSustainDecay(peak_lr=1e-3, steps_per_epoch=10, warmup_epochs=1.5, sustain_epochs=1,
                               decay="exponential", decay_rate=0.5, start_lr=0.0, min_lr=1e-5)
    expected = {0: 0.0, 1: 1e-3 / 15, 7: 7e-3 / 15, 14: 14e-3 / 15, 15: 1e-3, 24: 1e-3,
                25: 1e-3, 30: 1e-5 + (1e-3 - 1e-5) * 0.5 ** 0.5, 35: 1e-5 + (1e-3 - 1e-5) * 0.5,
                55: 1e-5 + (1e-3 - 1e-5) * 0.125}
    for step, lr in expected.items():
        assert float(sched(step)) == pytest.approx(lr, rel=1e-5, abs=1e-12), step
    np.testing.assert_allclose(sched.at_step(list(expected)), list(expected.values()), rtol=1e-9, atol=1e-15)
    # Within the warm-up every step raises the rate: no step function by epoch.
    ramp = [float(sched(s)) for s in range(16)]
    assert all(b > a for a, b in zip(ramp, ramp[1:], strict=False))
    # The history's per-epoch value is the rate at the epoch's first step.
    np.testing.assert_allclose(sched.by_epoch([0, 1, 2, 3]), [0.0, 10e-3 / 15, 1e-3, expected[30]], rtol=1e-9)


def test_cosine_decay_reaches_min_at_the_end_of_the_last_epoch():
    kw = dict(steps_per_epoch=4, peak_lr=0.01, warmup_epochs=1, sustain_epochs=0, decay="cosine", total_epochs=5,
              start_lr=0.0, min_lr=0.001)
    # Cosine over the 16 steps after the 4-step warm-up.
    assert lr_at_step(4, **kw) == pytest.approx(0.01)
    assert lr_at_step(12, **kw) == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert lr_at_step(20, **kw) == pytest.approx(0.001) and lr_at_step(99, **kw) == pytest.approx(0.001)
    sched = WarmupSustainDecay(**kw)
    assert [float(sched(s)) for s in range(0, 21, 3)] == pytest.approx(list(lr_at_step(np.arange(0, 21, 3), **kw)),
                                                                       rel=1e-5)


def test_the_rate_is_a_function_of_the_optimizer_step_alone():
    # What makes a resume exact: the optimizer's step count, restored from the checkpoint, fixes the rate.
    sched = WarmupSustainDecay(peak_lr=2e-3, steps_per_epoch=7, warmup_epochs=0.5, sustain_epochs=2,
                               decay="cosine", decay_rate=0.9, total_epochs=9, start_lr=1e-6, min_lr=1e-7)
    opt = keras.optimizers.AdamW(learning_rate=sched)
    for step in (0, 3, 4, 7 * 4, 7 * 8 + 6):
        opt.iterations.assign(step)
        assert float(opt.learning_rate) == pytest.approx(float(sched(step)))
    assert float(sched(0)) == pytest.approx(1e-6) and float(sched(4)) == pytest.approx(2e-3)  # round(3.5) = 4


def test_the_learning_rate_plot_draws_the_ramp_step_by_step():
    cfg = config_from_dict({}, ["optim.learning_rate=0.001", "optim.warmup_epochs=1", "optim.min_lr=0",
                                "train.epochs=3"])
    x, y = lr_curve(schedule_from_config(cfg, 8).by_epoch, 3, points_per_epoch=8)
    assert len(x) == 24 and x[1] == pytest.approx(1 / 8)
    np.testing.assert_allclose(y[:9], [i * 1e-3 / 8 for i in range(9)], rtol=1e-9)  # 8 rising steps in epoch 1


def test_learning_rate_factor_of_a_larger_global_batch():
    cfg = config_from_dict({}, ["optim.learning_rate=0.001", "optim.warmup_epochs=0"])
    assert float(schedule_from_config(cfg, 5, lr_factor=8)(0)) == pytest.approx(0.008)
    per_replica = ["train.batch_size=32", "train.scale_batch_with_replicas=true"]
    # Square-root rule by default (AdamW): 8 replicas of 32 = 256 images, x sqrt(8); linear on request.
    assert global_batch(config_from_dict({}, per_replica), 8) == (256, pytest.approx(math.sqrt(8)))
    assert global_batch(config_from_dict({}, [*per_replica, "optim.lr_scaling=linear"]), 8) == (256, 8.0)
    assert global_batch(config_from_dict({}, [*per_replica, "optim.scale_lr_with_replicas=false"]), 8) == (256, 1.0)
