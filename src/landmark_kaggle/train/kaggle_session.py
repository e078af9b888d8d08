"""``train --kaggle``: a Kaggle training session's inputs, found by what they hold, and the chain of sessions.

Kaggle mounts attached datasets, Models and kernel outputs under the input
root in several layouts, so nothing here trusts a slug or a fixed path: every
input is found by ``paths.find_inputs`` (five levels deep, GLDv2's image trees
skipped), the same finder the submission and build kernels use:

- shard datasets: a folder with ``label_map.csv`` and ``*.tfrec`` (``paths.find_inputs``: every part of
  a split build, the build-write kernels' outputs, also a part with only validation shards);
- a previous session's output: a folder with ``checkpoint/state.json`` made
  with this run's settings (this kernel's last version, attached through
  ``kernel_sources`` by ``kernels push train --continue``; an earlier stage's
  output, made at another image size, is not one). A new version starts with
  an empty working folder, so its model folder is copied there and training resumes;
- a backbone weights file (``*.h5``, a dataset or a Kaggle Model), used instead
  of downloading when ``model.weights=imagenet``: a file counts when it loads
  into the configured backbone without a mismatch.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from landmark_kaggle import paths
from landmark_kaggle.errors import UserError

STATE = Path("checkpoint") / "state.json"


@dataclass
class Session:
    data: list[str]
    out: Path
    resume: bool
    previous: Path | None  # the previous version's model folder, when one was copied in
    weights: Path | None  # an attached backbone weights file, when one was found
    ignored: list[str] = field(default_factory=list)  # checkpoints of other runs, with the reason


def keras_weight_files(found: paths.Inputs) -> list[Path]:
    """The Keras ``.h5`` files among the weights ``paths.find_inputs`` found (outside checkpoints and model folders)."""
    return [f for f in found["weights"] if f.name.endswith(".h5")]


def backbone_weights(candidates: list[Path], cfg) -> Path | None:
    """The first candidate that loads into ``cfg.model.backbone`` without a mismatch (Keras is imported here)."""
    import keras

    from landmark_kaggle.model.network import build_backbone

    probe = replace(cfg, data=replace(cfg.data, image_size=64), model=replace(cfg.model, weights="none"))
    backbone = build_backbone(probe)
    try:
        for path in candidates:
            try:
                backbone.load_weights(path, skip_mismatch=False)
            except Exception:  # another network's file, or not Keras weights at all: not ours
                continue
            return path
        return None
    finally:
        del backbone
        # clear_session resets Keras's global settings, the dtype policy among them: keep the run's.
        policy = keras.config.dtype_policy()
        keras.backend.clear_session()
        keras.config.set_dtype_policy(policy)


def _state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _step(folder: Path) -> int:
    return int((_state(folder) or {}).get("global_step", -1))


def same_run(folders: list[Path], cfg) -> tuple[list[Path], list[str]]:
    """The checkpoints made with ``cfg``'s settings (those a resume accepts), and why the others are not."""
    from landmark_kaggle.train.loop import why_not_resumable

    same, other = [], []
    for folder in folders:
        state = _state(folder)
        why = f"{folder / STATE}: unreadable" if state is None else why_not_resumable(state, cfg, folder / STATE)
        if why:
            other.append(why)
        else:
            same.append(folder)
    return same, other


def prepare_session(cfg, out: str | os.PathLike | None = None, data: list[str] | None = None) -> Session:
    """Find the shards and a previous output under the input root; copy that output's model folder into ``out``.

    ``out`` defaults to ``model`` in the working root. A checkpoint already in
    ``out`` (this session was started before) wins over the previous version's.
    """
    root = paths.kaggle_input_root()
    found = paths.find_inputs(root)  # one walk of the input tree for everything below
    out = Path(out) if out else paths.kaggle_working_root() / "model"
    if not data:
        # Every part of a split build, also one that holds only validation shards.
        shards = found["shards"]
        if not shards:
            raise UserError(f"no shard dataset under {root} (a folder with label_map.csv and train-*.tfrec); "
                            "attach the one `tfrec-builder write` made")
        data = [str(s) for s in shards]
    previous, ignored = None, []
    if not (out / STATE).is_file():
        outputs, ignored = same_run(found["train_output"], cfg)
        if outputs:
            previous = max(outputs, key=_step)  # the furthest run, if several versions are attached
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(previous, out, dirs_exist_ok=True)
    weights = None
    if cfg.model.weights == "imagenet":
        weights = backbone_weights(keras_weight_files(found), cfg)
    return Session(data=data, out=out, resume=(out / STATE).is_file(), previous=previous, weights=weights,
                   ignored=ignored)


def describe(session: Session) -> str:
    resumed = f"resuming from {session.previous} (step {_step(session.out)})" if session.previous else \
        ("resuming its own checkpoint" if session.resume else "a fresh start")
    weights = f"; backbone weights {session.weights} (attached)" if session.weights else ""
    lines = [f"train --kaggle: shards {', '.join(session.data)}; {resumed} -> {session.out}{weights}"]
    lines += [f"train --kaggle: not this run's checkpoint: {why}" for why in session.ignored]
    return "\n".join(lines)
