"""The custom layers, the ArcFace loss and the schedule: hand-computed values, then one harness over all four.

The harness (keras-hub's layer-test idea) runs the same checks on every
serialisable piece: its config round-trips with every constructor argument
kept and the same output; a tiny model holding it reloads from ``.keras`` and
from ``.weights.h5`` with identical outputs; and under the ``mixed_bfloat16``
and ``mixed_float16`` global policies its output is float32 and matches float32.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pytest
import tensorflow as tf

from landmark_kaggle.model.layers import ArcFaceLoss, CosineClassifier, GeMPooling2D, arcface_logits, dynamic_margins
from landmark_kaggle.train.schedule import WarmupSustainDecay


def _np_arcface(cos_target, m, easy=False):
    """cos(θ + m) with the paper's / InsightFace's threshold handling, written from the formula."""
    theta = math.acos(cos_target)
    if easy:
        return math.cos(theta + m) if cos_target > 0 else cos_target
    if theta + m <= math.pi:  # i.e. cos θ > cos(π - m)
        return math.cos(theta + m)
    return cos_target - math.sin(math.pi - m) * m


def _np_ce(logits, label):
    z = logits - logits.max()
    return float(np.log(np.exp(z).sum()) - z[label])


def test_gem_with_p1_is_average_pooling_and_p_large_tends_to_max():
    x = np.random.default_rng(0).uniform(0.1, 2.0, (2, 3, 4, 5)).astype("float32")
    avg = x.mean(axis=(1, 2))
    np.testing.assert_allclose(GeMPooling2D(p=1.0)(x).numpy(), avg, rtol=1e-5)
    p3 = (x ** 3).mean(axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(GeMPooling2D(p=3.0)(x).numpy(), p3, rtol=1e-5)
    np.testing.assert_allclose(GeMPooling2D(p=60.0)(x).numpy(), x.max(axis=(1, 2)), rtol=0.05)


def test_cosine_classifier_matches_numpy_and_subcenters_take_the_max():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer = CosineClassifier(3, subcenters=2, scale=30.0)
    out = layer(x).numpy()
    w = layer.kernel.numpy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    expected = 30.0 * (xn @ wn).reshape(4, 3, 2).max(axis=-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and np.all(np.abs(out) <= 30.0 + 1e-4)


@pytest.mark.parametrize("cos_target", [0.95, 0.5, 0.0, -0.5, -0.95])
@pytest.mark.parametrize("easy", [False, True])
def test_arcface_loss_equals_the_formula_by_hand(cos_target, easy):
    s, m = 30.0, 0.5
    cos = np.array([[cos_target, 0.3, -0.2, 0.1]], dtype="float32")
    label = 0
    phi = _np_arcface(cos_target, m, easy)
    margined = cos[0].astype(np.float64).copy()
    margined[label] = phi
    expected = _np_ce(s * margined, label)
    loss = ArcFaceLoss(scale=s, margin=m, easy_margin=easy)(np.array([label]), s * cos)
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # The non-target logits are untouched.
    adjusted = arcface_logits(np.array([label]), s * cos, s, m, easy).numpy()
    np.testing.assert_allclose(adjusted[0, 1:], s * cos[0, 1:], rtol=1e-5)


def test_per_class_margins_use_each_rows_own_class():
    s = 10.0
    margins = np.array([0.1, 0.4, 0.7], dtype="float32")
    cos = np.array([[0.8, 0.1, 0.0], [0.2, 0.6, 0.1], [0.0, 0.3, 0.9]], dtype="float32")
    y = np.array([0, 1, 2])
    got = arcface_logits(y, s * cos, s, margins).numpy()
    for i in range(3):
        assert got[i, i] == pytest.approx(s * math.cos(math.acos(cos[i, i]) + margins[i]), rel=1e-4)


def test_no_nan_in_loss_or_gradient_at_cos_plus_minus_one():
    for dtype in ("float32", "bfloat16", "float16"):
        logits = tf.Variable(tf.constant([[30.0, -30.0, 0.0], [-30.0, 30.0, 30.0]], dtype=dtype))
        with tf.GradientTape() as tape:
            loss = ArcFaceLoss(scale=30.0, margin=0.5)(tf.constant([0, 0]), logits)
        grad = tape.gradient(loss, logits)
        assert np.isfinite(float(loss)) and np.all(np.isfinite(tf.cast(grad, tf.float32).numpy())), dtype


def test_dynamic_margins_rare_classes_get_the_larger_margin():
    counts = np.array([1, 16, 10000])
    m = dynamic_margins(counts, 0.05, 0.5)
    assert m[0] == pytest.approx(0.5) and m[2] == pytest.approx(0.05)
    w = counts.astype(float) ** -0.25
    assert m[1] == pytest.approx(0.05 + 0.45 * (w[1] - w[2]) / (w[0] - w[2]), rel=1e-5)
    np.testing.assert_allclose(dynamic_margins([5, 5], 0.1, 0.3), [0.3, 0.3])


# -- the harness ---------------------------------------------------------------------------------------------

RNG = np.random.default_rng(3)
# Activations up to 60: x^3 passes float16's 65,504 from 41 on, which a GeM computed in float16 turns into inf.
FEATURES = RNG.uniform(0.0, 60.0, (2, 3, 4, 5)).astype("float32")
VECTORS = RNG.normal(size=(4, 6)).astype("float32")
LABELS = np.array([0, 3, 1, 3])
LOGITS = (16.0 * np.clip(RNG.normal(0, 0.4, (4, 4)), -1, 1)).astype("float32")
STEPS = (0, 6, 7, 20, 41, 200)


@dataclass(frozen=True)
class Case:
    cls: type
    kwargs: dict  # not the defaults, so an argument that get_config leaves out changes the round trip
    direct: Callable  # (object, dtype of the inputs) -> output of the object on its own
    body: Callable  # keras.Input -> (tensor into the classifier/loss, model output)
    probe: Callable  # tiny model -> what must be identical after a reload


def _apply(inputs):
    return lambda obj, dtype: obj(keras.ops.cast(inputs, dtype))


def _predict(model):
    return model.predict(FEATURES if len(model.inputs[0].shape) == 4 else VECTORS, verbose=0)


def _loss_probe(model):
    return np.float32(model.evaluate(VECTORS, LABELS, batch_size=4, verbose=0))


def _lr_probe(model):
    """The optimizer's rate at its restored step, then at other steps (the step counter put back after)."""
    opt = model.optimizer
    now = int(opt.iterations.numpy())
    rates = [float(opt.learning_rate)]
    for step in STEPS:
        opt.iterations.assign(step)
        rates.append(float(opt.learning_rate))
    opt.iterations.assign(now)
    return np.array([now, *rates])


CASES = {
    "GeMPooling2D": Case(
        GeMPooling2D, dict(p=2.5, trainable_p=True, epsilon=1e-5, name="gem"), _apply(FEATURES),
        lambda obj, x: obj(keras.layers.Dense(5, activation="relu")(x)), _predict),
    "CosineClassifier": Case(
        CosineClassifier, dict(num_classes=4, subcenters=3, scale=16.0, kernel_initializer="he_normal", name="cc"),
        _apply(VECTORS), lambda obj, x: obj(keras.layers.Dense(5)(x)), _predict),
    "ArcFaceLoss": Case(
        ArcFaceLoss, dict(scale=16.0, margin=0.3, margins=[0.1, 0.2, 0.3, 0.4], easy_margin=True,
                          label_smoothing=0.1, name="arc"),
        lambda obj, dtype: obj(LABELS, keras.ops.cast(LOGITS, dtype)),
        lambda obj, x: CosineClassifier(4, scale=16.0)(keras.layers.Dense(5)(x)), _loss_probe),
    "WarmupSustainDecay": Case(
        WarmupSustainDecay, dict(peak_lr=2e-3, steps_per_epoch=7, warmup_epochs=1, sustain_epochs=2, decay="cosine",
                                 decay_rate=0.9, total_epochs=9, start_lr=1e-6, min_lr=1e-7, name="wsd"),
        lambda obj, dtype: keras.ops.stack([obj(s) for s in STEPS]),
        lambda obj, x: keras.layers.Dense(2)(x), _lr_probe),
}


def _tiny_model(case: Case, obj) -> keras.Model:
    """A compiled model holding ``obj`` (as a layer, its loss or its optimizer's schedule), optimizer built."""
    inputs = keras.Input(FEATURES.shape[1:] if case.cls is GeMPooling2D else VECTORS.shape[1:])
    model = keras.Model(inputs, case.body(obj, inputs))
    lr = obj if isinstance(obj, WarmupSustainDecay) else 1e-3
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=lr),
                  loss=obj if isinstance(obj, ArcFaceLoss) else "mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(23)  # a mid-run step: the schedule's rate depends on it
    return model


def _copy_weights(src, dst, case: Case) -> None:
    if isinstance(src, keras.layers.Layer):
        for layer in (src, dst):
            if not layer.built:
                case.direct(layer, "float32")  # builds its weights
        dst.set_weights(src.get_weights())


def _out(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    keras.utils.set_random_seed(0)
    return CASES[request.param]


def test_config_round_trip_keeps_every_argument_and_the_output(case):
    obj = case.cls(**case.kwargs)
    config = obj.get_config()
    for key, value in case.kwargs.items():
        if key == "kernel_initializer":
            assert config[key]["class_name"] == "HeNormal"
        else:
            assert config[key] == value, key
    for again in (case.cls.from_config(config),
                  keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))):
        assert type(again) is case.cls and again.get_config() == config
        _copy_weights(obj, again, case)
        np.testing.assert_array_equal(_out(case.direct(again, "float32")), _out(case.direct(obj, "float32")))


@pytest.mark.parametrize("fmt", [".keras", ".weights.h5"])
def test_a_tiny_model_holding_it_reloads_with_identical_outputs(case, fmt, tmp_path):
    model = _tiny_model(case, case.cls(**case.kwargs))
    expected = case.probe(model)
    path = tmp_path / f"m{fmt}"
    if fmt == ".keras":
        model.save(path)
        again = keras.saving.load_model(path)  # no custom_objects: the registered names must suffice
    else:
        model.save_weights(path)
        again = _tiny_model(case, case.cls.from_config(case.cls(**case.kwargs).get_config()))
        again.optimizer.iterations.assign(0)
        assert not np.array_equal(case.probe(again), expected)  # so the load below is what makes them equal
        again.load_weights(path)
    np.testing.assert_array_equal(case.probe(again), expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_output_is_float32_under_a_mixed_global_policy(case, policy):
    ref = case.cls(**case.kwargs)
    expected = _out(case.direct(ref, "float32"))
    try:
        keras.mixed_precision.set_global_policy(policy)
        obj = case.cls(**case.kwargs)
        _copy_weights(ref, obj, case)
        # The inputs come in the policy's compute dtype, as from the layer before under that policy.
        got = case.direct(obj, keras.mixed_precision.global_policy().compute_dtype)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    got = _out(got)
    assert np.all(np.isfinite(got))
    # bf16 inputs carry 8 significant bits (~0.4%), fp16 11; the computation itself is float32.
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * float(np.abs(expected).max()))
