"""A model folder made ready for inference, and batch embedding over an evaluation dataset.

``load_for_inference`` turns a model folder into one function: float32 images
``[B, S, S, 3]`` (0..255, the pipeline's eval path) → the cosine classifier's
``cos θ`` over every class and the L2-normalised embedding, both float32 numpy.
``predict`` and ``embed-index`` both go through it, so an index and the queries
searched against it always come from the same network, settings and
preprocessing. With two or more GPUs (Kaggle's T4 ×2) the network is mirrored
on each and every batch is split between them (``model.replicas``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from landmark_kaggle.config import Config, config_from_dict
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import file_sha256

if TYPE_CHECKING:
    import tensorflow as tf

EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class InferenceBundle:
    config: Config
    label_map: pd.DataFrame
    embed_fn: EmbedFn  # float32 images [B,S,S,3] → (cos θ [B,C], unit embedding [B,D]) as numpy
    model_sha: str  # sha256 of the weights: an index made by the same file needs no probe check
    model_dir: Path


def load_for_inference(model_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> InferenceBundle:
    """Load a model folder; ``overrides`` may change ``inference.*`` settings only.

    The network is rebuilt under ``inference.precision`` (float32 unless asked), whatever precision it was
    trained under; the outputs are float32 either way.
    """
    import keras
    import tensorflow as tf

    from landmark_kaggle.model.network import (
        CONFIG_FILE,
        WEIGHTS_FILE,
        embedding_model,
        load_model_dir,
        read_model_config,
    )
    from landmark_kaggle.model.replicas import replicas

    bad = [o for o in overrides if not o.strip().startswith("inference.")]
    if bad:
        raise UserError(f"--set {bad[0]}: predict only changes inference.* settings; "
                        "the rest comes from the model folder")
    folder = Path(model_dir)
    if overrides and (folder / CONFIG_FILE).is_file():
        cfg = config_from_dict(read_model_config(folder / CONFIG_FILE)[0].to_dict(), overrides)
    else:
        cfg = None
    devices = replicas()
    with devices.scope():
        bundle = load_model_dir(folder, precision=cfg.inference.precision if cfg else "float32")
        both = keras.Model(bundle.model.inputs, [bundle.model.outputs[0], embedding_model(bundle.model).outputs[0]])
    cfg = cfg or bundle.config
    scale = float(cfg.model.scale)

    def forward(images):
        logits, emb = both(images, training=False)
        return tf.cast(logits, tf.float32) / scale, tf.cast(emb, tf.float32)

    return InferenceBundle(cfg, bundle.label_map, devices.runner(forward), file_sha256(folder / WEIGHTS_FILE), folder)


def iterate_batches(fn: Callable, dataset: tf.data.Dataset, batch_size: int) -> Iterator[tuple[list[str], object]]:
    """Yield (ids, fn(images)) per batch of an (id, image) dataset; decoding the next batches overlaps ``fn``."""
    import tensorflow as tf

    for ids, images in dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        yield [i.decode() for i in ids.numpy()], fn(images)


def probe_embedding(bundle: InferenceBundle) -> np.ndarray:
    """The model's embedding of the store probe image (``embstore.probe_image``) at the model's input size."""
    from landmark_kaggle.data.embstore import probe_image

    return bundle.embed_fn(probe_image(bundle.config.data.image_size)[None].astype(np.float32))[1][0]
