"""Image-embedding backends, chosen by name: ``keras:<App>``, ``mmseg:<config>``, ``model:<DIR>``, ``avg:a+b``.

Every backend takes RGB uint8 images of any size and returns float32
``[B, D]``. A spec may carry its own weights after ``@`` (``keras:EfficientNetB7@/w/b7_notop.h5``),
which is how the parts of an ``avg:`` backend get theirs; ``--weights`` fills
in a single backend's. ``weights_sha256`` identifies the weights in the
store's meta.json (``random:seed<N>`` for ``--weights none``).

* ``keras:<Application>`` and ``model:<MODEL_DIR>``: ``tfrec_builder.keras_backends``.
* ``mmseg:<config>``: ``tfrec_builder.mmseg_backend`` (the ``seg`` extra).
* ``avg:<a>+<b>+…``: the mean of the parts' L2-normalised embeddings (the
  poster's "average of top 3 segmentation embeddings"); parts must share a dim.

This module holds what every backend shares and the registry ``KINDS``; each
kind's module imports this one and is itself imported only when that kind is
asked for (so ``keras:`` never loads torch and ``mmseg:`` never loads TensorFlow).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np

from landmark_kaggle.errors import UserError


class BackendError(UserError):
    """A backend that cannot be built as asked; the message says what to provide."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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


def weights_file(weights: str, what: str) -> Path:
    """The local weights file a backend was given, or a BackendError naming the backend and the path."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackendError(f"{what}: weights file {path} not found")
    return path


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


# kind -> "module:class"; every class takes (spec, weights, image_size, seed).
KINDS = {
    "keras": "tfrec_builder.keras_backends:KerasBackend",
    "model": "tfrec_builder.keras_backends:ModelDirBackend",
    "mmseg": "tfrec_builder.mmseg_backend:MMSegBackend",
}


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
    if kind not in KINDS:
        raise BackendError(f"{spec!r}: unknown backend kind {kind!r} ({', '.join(KINDS)}, avg)")
    module, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(rest, weights, image_size, seed)
