"""Settings files written before the one ``train`` section was split: where each moved key lives now.

``config.json`` of older model folders and checkpoints' recorded settings
still load; ``config.config_from_dict`` moves their keys with ``migrate`` and
refuses an old key given with ``--set``, naming its new place.
"""

from __future__ import annotations

import json
from typing import Any

# Keys that lived in the one ``train`` section before it was split (config.json of older model folders and
# checkpoints): where each lives now.
MOVED_KEYS = {
    **{f"train.{k}": f"optim.{k}" for k in ("learning_rate", "scale_lr_with_replicas", "weight_decay",
                                            "warmup_epochs", "sustain_epochs", "decay", "decay_rate", "min_lr",
                                            "clipnorm")},
    "train.strategy": "runtime.strategy", "train.precision": "runtime.precision", "train.backend": "runtime.backend",
    "train.time_budget": "session.time_budget", "train.checkpoint_every_steps": "session.checkpoint_every_steps",
    "train.class_sample": "embeddings.class_sample",
}


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A config mapping written before the sections were split, moved to today's sections (a copy)."""
    merged: dict[str, Any] = json.loads(json.dumps(values or {}))
    train = merged.get("train")
    if isinstance(train, dict):
        for old, new in MOVED_KEYS.items():
            key = old.split(".", 1)[1]
            if key in train:
                section, name = new.split(".")
                merged.setdefault(section, {}).setdefault(name, train.pop(key))
    return merged


def migrate_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """The same move for a flat ``{"section.key": value}`` mapping (a checkpoint's recorded settings)."""
    return {MOVED_KEYS.get(k, k): v for k, v in flat.items()}
