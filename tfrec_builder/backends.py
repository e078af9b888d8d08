"""Image-embedding backends, chosen by name: ``keras:<App>``, ``mmseg:<config>``, ``model:<DIR>``, ``avg:a+b``.

Every backend takes RGB uint8 images of any size and returns float32
``[B, D]``. A spec may carry its own weights after ``@`` (``keras:EfficientNetB7@/w/b7_notop.h5``),
which is how the parts of an ``avg:`` backend get theirs; ``--weights`` fills
in a single backend's. ``weights_sha256`` identifies the weights in the
store's meta.json (``random:seed<N>`` for ``--weights none``).

* ``keras:<Application>``: any keras.applications model, ``include_top=False``
  and global average pooling, the application's own preprocessing.
* ``mmseg:<config>``: see ``tfrec_builder.mmseg_backend`` (the ``seg`` extra).
* ``model:<MODEL_DIR>``: the L2-normalised ``embedding`` layer of a
  landmark-kaggle model folder, fed through the package's eval path; needs no
  pretrained weights, so a model trained on the noisy data can clean it.
* ``avg:<a>+<b>+…``: the mean of the parts' L2-normalised embeddings (the
  poster's "average of top 3 segmentation embeddings"); parts must share a dim.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import cv2
import numpy as np

from landmark_kaggle.clibase import UserError

DEFAULT_KERAS_SIZE = 224


class BackendError(UserError):
    """A backend that cannot be built as asked; the message says what to provide."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_image(size: int = 256) -> np.ndarray:
    """A fixed synthetic RGB image (gradients and a checkerboard): the store's backend fingerprint."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    checker = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 80
    rgb = np.stack([xx * 255, yy * 175 + checker, (1 - xx) * 120 + checker], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


class Backend:
    name: str
    image_size: int | dict
    dim: int
    weights: str
    weights_sha256: str

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def meta(self) -> dict:
        return {"backend": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "image_size": self.image_size, "dim": self.dim}


def _split_weights(spec: str, weights: str | None) -> tuple[str, str | None]:
    if "@" in spec:
        spec, own = spec.split("@", 1)
        return spec, own
    return spec, weights


def _check_file(weights: str, what: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackendError(f"{what}: weights file {path} not found")
    return path


class _GetFileProbe(Exception):
    pass


def keras_imagenet_file(factory, kwargs: dict) -> tuple[str, str, Path]:
    """(file name, URL, Keras cache path) of the ImageNet weights ``factory`` would fetch, without fetching.

    keras.applications call ``file_utils.get_file`` once the graph is built;
    it is swapped for a recorder just for that call, then put back.
    """
    from keras.src.backend.config import keras_home
    from keras.src.utils import file_utils

    seen: dict = {}

    def record(fname=None, origin=None, cache_subdir="datasets", cache_dir=None, **_):
        seen.update(fname=fname or Path(origin).name, origin=origin, subdir=cache_subdir, dir=cache_dir)
        raise _GetFileProbe()

    real = file_utils.get_file
    file_utils.get_file = record
    try:
        factory(**{**kwargs, "weights": "imagenet"})
    except _GetFileProbe:
        pass
    finally:
        file_utils.get_file = real
    if not seen:
        raise BackendError(f"{factory.__name__} did not ask Keras for ImageNet weights; pass --weights PATH")
    cache = Path(seen["dir"] or keras_home()).expanduser() / seen["subdir"] / seen["fname"]
    return seen["fname"], seen["origin"], cache


class KerasBackend(Backend):
    def __init__(self, app: str, weights: str | None, image_size: int | None, seed: int = 0):
        import keras

        factory = getattr(keras.applications, app, None)
        if factory is None or not callable(factory):
            raise BackendError(f"keras:{app}: not a keras.applications model (e.g. EfficientNetB7, EfficientNetV2S)")
        self.name, self.image_size = f"keras:{app}", int(image_size or DEFAULT_KERAS_SIZE)
        kwargs = {"include_top": False, "pooling": "avg", "input_shape": (self.image_size, self.image_size, 3)}
        if "include_preprocessing" in factory.__code__.co_varnames:
            kwargs["include_preprocessing"] = True
        if weights is None:
            fname, origin, cache = keras_imagenet_file(factory, kwargs)
            if not cache.is_file():
                raise BackendError(f"keras:{app} needs ImageNet weights and there is no network: download {origin} "
                                   f"elsewhere and pass --weights /path/to/{fname} (or put it at {cache}, "
                                   "where Keras looks first); --weights none gives random weights")
            weights = str(cache)
        if str(weights).lower() == "none":
            keras.utils.set_random_seed(seed)
            self.weights, self.weights_sha256 = "none", f"random:seed{seed}"
            kwargs["weights"] = None
        else:
            path = _check_file(weights, self.name)
            self.weights, self.weights_sha256 = str(path), file_sha256(path)
            kwargs["weights"] = str(path)
        try:
            self.model = factory(**kwargs)
        except (ValueError, OSError) as exc:
            raise BackendError(f"{self.name}: cannot build with weights {self.weights}: {exc}") from None
        module = importlib.import_module(factory.__module__)
        self._preprocess = getattr(module, "preprocess_input", lambda x: x)
        self.dim = int(self.model.output_shape[-1])

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([resize_square(im, self.image_size) for im in images]).astype(np.float32)
        return np.asarray(self.model.predict_on_batch(self._preprocess(batch)), dtype=np.float32)


class ModelDirBackend(Backend):
    """The embedding of a landmark-kaggle model folder, through the same eval path as inference."""

    def __init__(self, folder: str):
        from landmark_kaggle.model import embedding_model, load_model_dir

        path = Path(folder)
        bundle = load_model_dir(path)
        self.model = embedding_model(bundle.model)
        self.data_cfg = bundle.config.data
        self.name, self.image_size = f"model:{path}", int(self.data_cfg.image_size)
        self.weights, self.weights_sha256 = str(path / "model.keras"), file_sha256(path / "model.keras")
        self.dim = int(self.model.output_shape[-1])

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        from landmark_kaggle.pipeline import eval_transform

        batch = np.stack([np.asarray(eval_transform(im, self.data_cfg)) for im in images]).astype(np.float32)
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)


class AverageBackend(Backend):
    def __init__(self, parts: list[Backend]):
        dims = {p.name: p.dim for p in parts}
        if len(set(dims.values())) != 1:
            raise BackendError(f"avg: parts must have one embedding size, got {dims}")
        self.parts = parts
        self.name = "avg:" + "+".join(p.name for p in parts)
        self.dim = parts[0].dim
        self.image_size = {p.name: p.image_size for p in parts}
        self.weights = "+".join(p.weights for p in parts)
        self.weights_sha256 = "+".join(p.weights_sha256 for p in parts)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        return np.mean([l2_normalize(p.embed(images)) for p in self.parts], axis=0)


def build_backend(spec: str, weights: str | None = None, image_size: int | None = None, seed: int = 0) -> Backend:
    """Parse a backend name and build it; ``weights``/``image_size`` apply where the spec carries none."""
    kind, _, rest = spec.partition(":")
    if kind == "avg":
        parts = [p for p in rest.split("+") if p]
        if len(parts) < 2:
            raise BackendError(f"{spec}: avg needs two or more backends joined by '+'")
        return AverageBackend([build_backend(p, weights, image_size, seed) for p in parts])
    rest, weights = _split_weights(rest, weights)
    if not rest:
        raise BackendError(f"{spec!r}: expected keras:<App>, mmseg:<config>, model:<DIR> or avg:<a>+<b>")
    if kind == "keras":
        return KerasBackend(rest, weights, image_size, seed)
    if kind == "mmseg":
        from tfrec_builder.mmseg_backend import MMSegBackend

        return MMSegBackend(rest, weights, image_size, seed)
    if kind == "model":
        return ModelDirBackend(rest)
    raise BackendError(f"{spec!r}: unknown backend kind {kind!r} (keras, mmseg, model, avg)")
