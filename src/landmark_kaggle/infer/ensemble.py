"""Several model folders and flip TTA as one embedding function, for ``predict`` and ``embed-index``.

Built around the per-model bundles ``inference.load_for_inference`` returns
(their internals are not touched). For a batch of images:

- flip TTA (``inference.tta=flip``): each model also sees the mirrored image;
  its cos θ is the mean of the two and its embedding the L2-normalised mean of
  the two unit embeddings;
- an ensemble of M models: the cosines are averaged over one shared label map
  (models whose ``label_map.csv`` differ are refused) and the embedding is the
  concatenation of the members' unit embeddings divided by √M, so it is a unit
  vector and the cosine between two such vectors is the mean of the members'
  cosines.

Members with different input sizes each get their own view of the image (the
eval datasets decode once and transform once per distinct size). Inference
settings come from the first model folder plus ``--set``.

An index records which ensemble made it (``describe``): every member's weights
sha256, in order, its embedding width, and the TTA mode; ``check_index``
refuses an index from another ensemble or order, with each member's probe
embedding compared when a weights file differs, and an index embedded with
another TTA mode than the queries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landmark_kaggle.data.embstore import StoreError, check_probe
from landmark_kaggle.errors import UserError
from landmark_kaggle.infer.embedder import InferenceBundle, load_for_inference, probe_embedding


@dataclass
class Member:
    bundle: InferenceBundle
    view: int  # which of the dataset's views this model reads
    probe: np.ndarray  # its embedding of the store probe image, without TTA

    @property
    def dim(self) -> int:
        return int(self.probe.shape[-1])


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class Embedder:
    """images (one view, or a tuple of views) → (cos θ [B, C], unit embedding [B, D]) over every member."""

    def __init__(self, bundles: list[InferenceBundle], tta: str = "none"):
        if not bundles:
            raise UserError("no model folder given (--model)")
        first = bundles[0]
        for other in bundles[1:]:
            cols = ["label", "landmark_id"]
            if not other.label_map[cols].reset_index(drop=True).equals(first.label_map[cols].reset_index(drop=True)):
                raise UserError(f"{other.model_dir}/label_map.csv differs from {first.model_dir}/label_map.csv: "
                                "an ensemble averages cosines over one shared label map (train every member on "
                                "the same shards)")
        views: list = []
        self.members = []
        for b in bundles:
            key = (b.config.data.image_size, b.config.data.crop_fraction)
            keys = [(v.image_size, v.crop_fraction) for v in views]
            if key not in keys:
                views.append(b.config.data)
            self.members.append(Member(b, [(v.image_size, v.crop_fraction) for v in views].index(key),
                                       probe_embedding(b)))
        self.views = views
        self.tta = tta

    @property
    def config(self):
        return self.members[0].bundle.config

    @property
    def label_map(self):
        return self.members[0].bundle.label_map

    @property
    def data_cfg(self):
        """What the eval datasets take: one DataConfig, or a tuple when members need different views."""
        return self.views[0] if len(self.views) == 1 else tuple(self.views)

    @property
    def dim(self) -> int:
        return sum(m.dim for m in self.members)

    @property
    def fingerprints(self) -> list[str]:
        return [m.bundle.model_sha for m in self.members]

    def probe(self) -> np.ndarray:
        """The members' probe embeddings, concatenated in order (what an index stores as probe.npy)."""
        return np.concatenate([m.probe for m in self.members])

    def embed(self, views) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        views = views if isinstance(views, tuple) else (views,)
        cos_sum, embs = None, []
        for m in self.members:
            x = tf.convert_to_tensor(views[m.view], tf.float32)
            cos, emb = m.bundle.embed_fn(x)
            if self.tta == "flip":
                cos_f, emb_f = m.bundle.embed_fn(tf.reverse(x, axis=[2]))  # [B, H, W, 3]: axis 2 is the width
                cos, emb = (cos + cos_f) / 2, _unit(emb + emb_f)
            cos_sum = cos if cos_sum is None else cos_sum + cos
            embs.append(emb)
        n = len(self.members)
        emb = embs[0] if n == 1 else np.concatenate(embs, axis=1) / np.sqrt(n)
        return (cos_sum / n).astype(np.float32), emb.astype(np.float32)

    def backend(self) -> str:
        """The store's backend name: a resumed store must come from the same models, order and TTA."""
        names = [f"model:{Path(m.bundle.model_dir).resolve()}" for m in self.members]
        name = names[0] if len(names) == 1 else "ensemble:" + "+".join(names)
        return name if self.tta == "none" else f"{name}|tta={self.tta}"

    def weights_sha(self) -> str:
        import hashlib

        shas = self.fingerprints
        return shas[0] if len(shas) == 1 else hashlib.sha256("\n".join(shas).encode()).hexdigest()

    def describe(self) -> dict:
        return {"members": [{"model": str(m.bundle.model_dir), "weights_sha256": m.bundle.model_sha, "dim": m.dim}
                            for m in self.members], "tta": self.tta}

    def check_index(self, path: Path, meta: dict, stored_probe: np.ndarray | None) -> None:
        """Refuse an index that another model, ensemble, member order or TTA mode made."""
        # An index from before ensembles: one member, described by the store's own meta.
        members = meta.get("members") or [{"model": meta.get("backend", "?"), "dim": int(meta.get("dim", 0)),
                                           "weights_sha256": meta.get("weights_sha256")}]
        ours = self.describe()["members"]
        if len(members) != len(ours) or [int(m["dim"]) for m in members] != [m["dim"] for m in ours]:
            raise StoreError(f"{path}: made by {len(members)} model(s) ({', '.join(str(m['model']) for m in members)}; "
                             f"dims {[m['dim'] for m in members]}), but predict was given {len(ours)} "
                             f"({', '.join(m['model'] for m in ours)}; dims {[m['dim'] for m in ours]}); build the "
                             "index with the same --model list, in the same order")
        start = 0
        for i, (theirs, mine) in enumerate(zip(members, self.members, strict=True)):
            stop = start + mine.dim
            # Same weights file: nothing to check. Another file may hold the same weights; the probe tells.
            if theirs.get("weights_sha256") != mine.bundle.model_sha:
                if stored_probe is None:
                    raise StoreError(f"{path}: member {i + 1} was made from other weights ({theirs.get('model')}) "
                                     "and the index has no probe.npy to compare; rebuild it with embed-index")
                check_probe(path, stored_probe[start:stop], mine.probe, f"member {i + 1} ({mine.bundle.model_dir})")
            start = stop
        # Checked after the members, so a wrong model says so first. An index from before the mode was
        # recorded on its own says it in the store's backend name.
        theirs_tta = meta.get("tta") or ("flip" if "|tta=flip" in str(meta.get("backend", "")) else "none")
        if theirs_tta != self.tta:
            raise StoreError(f"{path}: embedded with inference.tta={theirs_tta}, but the queries are embedded with "
                             f"inference.tta={self.tta}; the index and the queries must be embedded alike (rebuild "
                             f"the index with --set inference.tta={self.tta}, or predict with "
                             f"--set inference.tta={theirs_tta})")


def load_embedder(model_dirs, overrides: list[str] | tuple[str, ...] = ()) -> Embedder:
    """One or several model folders (inference settings from the first, plus ``overrides``)."""
    dirs = [model_dirs] if isinstance(model_dirs, str | os.PathLike) else list(model_dirs)
    resolved = [Path(d).resolve() for d in dirs]
    twice = {str(d) for d in resolved if resolved.count(d) > 1}
    if twice:
        raise UserError(f"--model {sorted(twice)[0]} is given twice; an ensemble needs different models")
    bundles = [load_for_inference(d, overrides) for d in dirs]
    return Embedder(bundles, bundles[0].config.inference.tta)
