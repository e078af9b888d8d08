"""The trainer reads the step logs on the host only when it needs a value: no per-call host-device sync.

A real short ``train_model`` run, with every training call's logs wrapped so that
each conversion to a float or numpy array is recorded (``helpers.LogReads``),
whoever makes it: the trainer's callbacks or Keras's own callback list.
"""

import math

import pandas as pd
import pytest
from helpers import LogReads

from landmark_kaggle.config import config_from_dict
from landmark_kaggle.train.loop import train_model

BASE = ["data.image_size=32", "optim.warmup_epochs=0", "model.dropout=0", "train.batch_size=8",
        "runtime.strategy=cpu", "runtime.precision=float32", "data.deterministic=true",
        "model.backbone=MobileNetV3Small", "runtime.steps_per_execution=1"]


@pytest.mark.slow
def test_the_step_logs_are_read_only_at_checkpoints_and_every_log_interval(shards, tmp_path):
    # 8 one-step calls, a checkpoint every 3 steps, the loss shown every 4: the logs of calls 3 and 6 (the
    # partial metrics a checkpoint stores) and 4 are read; the epoch's end reads Keras's epoch metrics, not a
    # call's logs. Keras's own callback list would read all 8 (and so did the trainer's callback before).
    cfg = config_from_dict({}, [*BASE, "train.epochs=1", "train.steps_per_epoch=8",
                                "session.checkpoint_every_steps=3", "session.log_every_steps=4"])
    with LogReads() as reads:
        summary = train_model(str(shards), tmp_path / "model", cfg, progress=True)
    assert (summary["status"], summary["global_step"]) == ("complete", 8)
    assert reads.calls == 8
    assert reads.read == {3, 4, 6}
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert list(history["steps"]) == [8] and all(math.isfinite(history[c].iloc[0]) for c in ("loss", "top1"))
