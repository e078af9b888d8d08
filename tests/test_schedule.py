"""The warm-up / sustain / decay schedule by epoch (poster Figure 7) against its formula.

Its config round trip, reload and mixed-precision checks: the harness in test_layers.py.
"""

import math

import keras
import numpy as np
import pytest

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.train.schedule import WarmupSustainDecay, lr_at_epoch, schedule_from_config


def test_exponential_schedule_hand_values_and_steps_within_an_epoch():
    sched = WarmupSustainDecay(peak_lr=1e-3, steps_per_epoch=10, warmup_epochs=2, sustain_epochs=1,
                               decay="exponential", decay_rate=0.5, start_lr=1e-5, min_lr=1e-5)
    expected = {0: 1e-5, 1: 1e-5 + (1e-3 - 1e-5) / 2, 2: 1e-3, 3: 1e-3, 4: 1e-5 + (1e-3 - 1e-5) * 0.5,
                6: 1e-5 + (1e-3 - 1e-5) * 0.125}
    for epoch, lr in expected.items():
        for step in (epoch * 10, epoch * 10 + 9):
            assert float(sched(step)) == pytest.approx(lr, rel=1e-5), (epoch, step)
    np.testing.assert_allclose(sched.by_epoch(list(expected)), list(expected.values()), rtol=1e-6)


def test_cosine_schedule_reaches_min_at_the_last_epoch():
    kw = dict(peak_lr=0.01, warmup_epochs=1, sustain_epochs=0, decay="cosine", total_epochs=5, start_lr=0.0,
              min_lr=0.001)
    lrs = lr_at_epoch(np.arange(7), **kw)
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.01)
    assert lrs[3] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert lrs[5] == pytest.approx(0.001) and lrs[6] == pytest.approx(0.001)
    sched = WarmupSustainDecay(steps_per_epoch=3, **kw)
    assert [float(sched(3 * e)) for e in range(6)] == pytest.approx(list(lrs[:6]), rel=1e-5)


def test_schedule_drives_adamw_by_its_step_count():
    # Round trips and reloads: the harness in test_layers.py.
    sched = WarmupSustainDecay(peak_lr=2e-3, steps_per_epoch=7, warmup_epochs=1, sustain_epochs=2,
                               decay="cosine", decay_rate=0.9, total_epochs=9, start_lr=1e-6, min_lr=1e-7)
    opt = keras.optimizers.AdamW(learning_rate=sched)
    for step in (0, 7 * 4, 7 * 8 + 6):
        opt.iterations.assign(step)
        assert float(opt.learning_rate) == pytest.approx(float(sched(step)))
    assert float(sched(0)) == pytest.approx(1e-6) and float(sched(7 * 2)) == pytest.approx(2e-3)


def test_learning_rate_scales_with_the_global_batch_factor():
    cfg = config_from_dict({}, ["optim.learning_rate=0.001", "optim.warmup_epochs=0"])
    assert float(schedule_from_config(cfg, 5, lr_factor=8)(0)) == pytest.approx(0.008)
