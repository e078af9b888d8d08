"""AdamW as the trainers compile it: one step against hand-computed numbers, decay where it belongs.

The decay is decoupled (``w ← w − lr·wd·w`` beside the Adam step) and skips
biases, BatchNorm's γ and β and the ArcFace class centres (``optim.py`` says why).
"""

import keras
import numpy as np
import pytest

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.model.layers import CosineClassifier
from landmark_kaggle.train.optim import compile_model, decay_exclusions

LR, WD, EPS, B2 = 0.01, 0.05, 1e-7, 0.999


def _tiny():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    logits = CosineClassifier(2, name="logits")(x)
    return keras.Model(inputs, logits)


def test_default_weight_decay_is_the_fine_tuning_recipes_and_matters_at_this_rate():
    o = config_from_dict({}).optim
    assert o.weight_decay == 0.05
    # A decayed weight shrinks by lr·wd a step: 5e-5 at the peak rate, 500 times the old 1e-5 default's 1e-8.
    assert o.learning_rate * o.weight_decay == pytest.approx(5e-5)


def test_one_adamw_step_by_hand_decays_kernels_only():
    keras.utils.set_random_seed(3)
    model = _tiny()
    cfg = config_from_dict({}, [f"optim.learning_rate={LR}", f"optim.weight_decay={WD}", "optim.warmup_epochs=0",
                                f"optim.epsilon={EPS}"])
    compile_model(model, cfg, steps_per_epoch=10)
    excluded = {v.path for v in decay_exclusions(model)}
    assert excluded == {"dense/bias", "bn/gamma", "bn/beta", "logits/kernel"}
    variables = model.trainable_variables
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in variables}
    rng = np.random.default_rng(0)
    grads = {v.path: rng.normal(0, 0.3, v.shape).astype("float32") for v in variables}
    model.optimizer.apply([grads[v.path] for v in variables], variables)
    for v in variables:
        w, g = before[v.path], grads[v.path]
        # Adam's first step: m = (1-b1)g, v = (1-b2)g², step = lr·sqrt(1-b2)/(1-b1) · m / (sqrt(v) + eps).
        adam = LR * np.sqrt(1 - B2) * g / (np.sqrt((1 - B2) * g * g) + EPS)
        decay = 0.0 if v.path in excluded else LR * WD
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w - decay * w - adam, rtol=1e-5, atol=1e-7,
                                   err_msg=v.path)
    # The decayed kernel moved by exactly lr·wd·w more than the Adam step alone would have taken it.
    dense = next(v for v in variables if v.path == "dense/kernel")
    moved = before["dense/kernel"] - keras.ops.convert_to_numpy(dense)
    adam_only = LR * np.sqrt(1 - B2) * grads["dense/kernel"] / (np.sqrt((1 - B2) * grads["dense/kernel"] ** 2) + EPS)
    # float32 round-off of w - step is up to ~1e-7; the decay term is ~1e-4 here
    np.testing.assert_allclose(moved - adam_only, LR * WD * before["dense/kernel"], atol=2e-7)
