"""The custom layers and the ArcFace loss against hand-computed numpy values, plus config round-trips."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from landmark_kaggle.layers import ArcFaceLoss, CosineClassifier, GeMPooling2D, arcface_logits, dynamic_margins


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


def test_layers_and_loss_round_trip_through_get_config():
    gem = GeMPooling2D(p=2.5, trainable_p=True, epsilon=1e-5, name="g")
    gem2 = GeMPooling2D.from_config(gem.get_config())
    assert (gem2.p, gem2.trainable_p, gem2.epsilon, gem2.name) == (2.5, True, 1e-5, "g")
    cc = CosineClassifier(7, subcenters=3, scale=16.0, name="c")
    cc2 = CosineClassifier.from_config(cc.get_config())
    assert (cc2.num_classes, cc2.subcenters, cc2.scale, cc2.dtype_policy.name) == (7, 3, 16.0, "float32")
    loss = ArcFaceLoss(scale=20.0, margin=0.3, margins=[0.1, 0.2], easy_margin=True, label_smoothing=0.1)
    loss2 = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(loss2, ArcFaceLoss)
    assert (loss2.scale, loss2.margin, loss2.margins, loss2.easy_margin, loss2.label_smoothing) == \
        (20.0, 0.3, [pytest.approx(0.1), pytest.approx(0.2)], True, 0.1)


def test_small_model_with_custom_layers_reloads_without_custom_objects(tmp_path):
    inputs = keras.Input((4, 4, 2))
    x = GeMPooling2D(p=3.0)(keras.layers.Dense(5, activation="relu")(inputs))
    out = CosineClassifier(3, subcenters=2, scale=30.0)(x)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss=ArcFaceLoss())
    data = np.random.default_rng(2).uniform(size=(3, 4, 4, 2)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(data, verbose=0), model.predict(data, verbose=0))
    assert isinstance(again.loss, ArcFaceLoss)
