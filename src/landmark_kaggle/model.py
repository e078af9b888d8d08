"""The recognition model (poster Figure 4) and its folder: build, compile, save, load, embed.

images 0..255 → EfficientNetV2-S (no top) → GAP or GeM → Dropout → optional
Dense+BatchNorm neck → ``embedding`` → cosine classifier (``s·cos θ``, float32).
A model folder is ``model.keras`` + ``config.json`` (the resolved Config plus
``num_classes``) + ``label_map.csv``; inference reads image size and
preprocessing from it, never from its own defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd

from landmark_kaggle.config import SECTIONS, Config, config_from_dict, save_config
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_path
from landmark_kaggle.gld import read_label_map, write_label_map
from landmark_kaggle.layers import CosineClassifier, GeMPooling2D

MODEL_FILE = "model.keras"
MODEL_FOLDER_FILES = (MODEL_FILE, "config.json", "label_map.csv")
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
    """A keras.applications backbone without its top; weights none, "imagenet" or a local file."""
    name = cfg.model.backbone
    factory = getattr(keras.applications, name, None)
    if factory is None or not callable(factory):
        raise UserError(f"model.backbone = {name!r} is not a keras.applications model (e.g. EfficientNetV2S)")
    size = cfg.data.image_size
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


def inference_copy(model: keras.Model) -> keras.Model:
    """The same network and weights without optimizer or loss: a model folder is for inference."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_model_dir(model: keras.Model, cfg: Config, label_map: pd.DataFrame, out_dir, extra: dict | None = None):
    """Write ``model.keras``, ``config.json`` and ``label_map.csv`` into ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = int(model.output_shape[-1])
    if len(label_map) != num_classes:
        raise UserError(f"label map has {len(label_map)} classes but the model outputs {num_classes}")
    with atomic_path(out / MODEL_FILE) as tmp:  # a reader never sees half a model
        inference_copy(model).save(tmp)
    save_config(cfg, out / "config.json", {"num_classes": num_classes, **(extra or {})})
    write_label_map(label_map, out / "label_map.csv")
    return out


def read_model_config(path) -> tuple[Config, dict]:
    """The Config stored in a model folder's ``config.json`` and its extra keys (num_classes, …)."""
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


def load_model_dir(path, *, compile: bool = False) -> ModelBundle:
    """Load a model folder written by ``save_model_dir`` (or the trainer)."""
    folder = Path(path)
    for name in MODEL_FOLDER_FILES:
        if not (folder / name).is_file():
            raise UserError(f"model folder {folder} has no {name} (expected {', '.join(MODEL_FOLDER_FILES)})")
    cfg, extra = read_model_config(folder / "config.json")
    model = keras.saving.load_model(folder / MODEL_FILE, compile=compile)
    label_map = read_label_map(folder / "label_map.csv")
    classes = int(model.output_shape[-1])
    if len(label_map) != classes or extra.get("num_classes", classes) != classes:
        raise UserError(f"{folder}: model outputs {classes} classes, label_map.csv has {len(label_map)}, "
                        f"config.json says {extra.get('num_classes')}")
    return ModelBundle(model=model, config=cfg, label_map=label_map)
