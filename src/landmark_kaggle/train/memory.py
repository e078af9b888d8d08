"""``train --estimate``: parameter count, classifier size and per-replica memory, without training.

How the estimate is made (printed with it, so the README's table can be
checked): every replica holds all weights (fp32), their gradients and AdamW's
two slots (fp32), i.e. 16 bytes per trainable parameter. Activations: the
backbone is built symbolically at the image size and the elements of every
layer output are summed; training keeps them all for the backward pass, at 2
bytes each under mixed precision and 4 in float32. The classifier adds its
float32 logits, their softmax gradient and the one-hot target per image. XLA
fuses many of those outputs, so activations are an upper-side estimate; the
verdict keeps 15% of the device for workspace and fragmentation.
"""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np

from landmark_kaggle.config import Config

GIB = 1024**3
HEADROOM = 0.85
# Kaggle's accelerators, one device each, and the precision precision=auto gives them: a TPU v5e-8 core
# (16 GiB HBM, bf16) and one T4 of "GPU T4 x2" (15 GiB usable of its 16 GB, float16 + loss scaling).
DEVICES = (("TPU v5e core, 16 GiB", 16.0, "mixed_bfloat16"), ("T4, 15 GiB", 15.0, "mixed_float16"))


def _backbone_profile(cfg: Config, image_size: int) -> tuple[int, int, int]:
    """(backbone parameters, feature width, activation elements per image) at ``image_size``."""
    from landmark_kaggle.model.network import build_backbone

    c = replace(cfg, data=replace(cfg.data, image_size=image_size), model=replace(cfg.model, weights="none"))
    backbone = build_backbone(c)
    elems = 0
    for layer in backbone.layers:
        outs = layer.output if isinstance(layer.output, list | tuple) else [layer.output]
        for out in outs:
            elems += int(np.prod([d for d in out.shape[1:] if d is not None]))
    params = int(sum(np.prod(w.shape) for w in backbone.weights))
    feat = int(backbone.output_shape[-1])
    policy = keras.config.dtype_policy()  # clear_session resets it to float32
    keras.backend.clear_session()
    keras.config.set_dtype_policy(policy)
    return params, feat, elems


def estimate(cfg: Config, num_classes: int, per_replica_batch: int, image_size: int | None = None,
             precision: str = "float32", profile: tuple[int, int, int] | None = None) -> dict:
    """Bytes each replica needs to train one step; see the module docstring for the model."""
    size = image_size or cfg.data.image_size
    backbone_params, feat, act_elems = profile or _backbone_profile(cfg, size)
    m = cfg.model
    emb = m.embedding_dim or feat
    neck = (feat * m.embedding_dim + 4 * m.embedding_dim) if m.embedding_dim else 0
    classifier = emb * num_classes * m.subcenters
    params = backbone_params + neck + classifier
    act_bytes = 2 if precision.startswith("mixed") else 4
    state = params * 16
    per_image = act_elems * act_bytes + num_classes * m.subcenters * 4 * 3
    total = state + per_replica_batch * per_image
    return {
        "image_size": size, "per_replica_batch": per_replica_batch, "precision": precision,
        "num_classes": num_classes, "params": params, "backbone_params": backbone_params, "neck_params": neck,
        "classifier_params": classifier, "classifier_fp32_bytes": classifier * 4,
        "state_bytes": state, "activation_bytes_per_image": per_image, "total_bytes": total,
    }


def fit_table(cfg: Config, num_classes: int, device_gib: float, precision: str,
              sizes=(256, 384, 512, 640), batches=(8, 16, 32, 64, 128), profiles: dict | None = None) -> list[dict]:
    """The largest per-replica batch of ``batches`` that fits ``device_gib`` at each image size."""
    rows = []
    for size in sizes:
        prof = (profiles or {}).get(size) or _backbone_profile(cfg, size)
        best, need = 0, 0.0
        for b in batches:
            est = estimate(cfg, num_classes, b, size, precision, profile=prof)
            if est["total_bytes"] <= device_gib * GIB * HEADROOM:
                best, need = b, est["total_bytes"] / GIB
        rows.append({"image_size": size, "max_batch": best, "gib": round(need, 2)})
    return rows


def report(cfg: Config, num_classes: int, per_replica_batch: int, precision: str, table: bool = True) -> str:
    est = estimate(cfg, num_classes, per_replica_batch, precision=precision)
    lines = [
        f"backbone {cfg.model.backbone}: {est['backbone_params']:,} parameters; neck {est['neck_params']:,}",
        f"classifier: {est['classifier_params']:,} parameters ({num_classes:,} classes) = "
        f"{est['classifier_fp32_bytes'] / 1e6:,.0f} MB fp32 before optimizer state",
        f"total: {est['params']:,} parameters; weights + gradients + AdamW slots = {est['state_bytes'] / GIB:.2f} GiB "
        "per replica",
        f"per replica at batch {per_replica_batch}, {est['image_size']} px, {precision}: "
        f"{est['activation_bytes_per_image'] / 2**20:.1f} MiB activations per image, "
        f"about {est['total_bytes'] / GIB:.2f} GiB in all",
    ]
    if table:
        profiles = {size: _backbone_profile(cfg, size) for size in (256, 384, 512, 640)}
        for device, gib, prec in DEVICES:
            rows = fit_table(cfg, num_classes, gib, prec, profiles=profiles)
            cells = ", ".join(f"{r['image_size']} px: batch {r['max_batch'] or '-'}"
                              + (f" ({r['gib']} GiB)" if r["max_batch"] else "") for r in rows)
            lines.append(f"largest per-replica batch on one {device} ({prec}, {int(HEADROOM * 100)}% usable): {cells}")
    return "\n".join(lines)
