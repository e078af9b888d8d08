"""Progressive resizing: ``train --init-from`` starts a stage from the last stage's model folder at another size.

Stage one trains MobileNetV3Small at 32 px; stage two starts at 48 px from its
weights with so small a learning rate that its trainable weights must still be
stage one's, while a fresh model of the same seed is not. A stage over another
class count keeps everything but the classifier, which starts fresh.
"""

import json

import numpy as np
import pytest
from helpers import built_once, heavy

from landmark_kaggle.cli import main
from landmark_kaggle.config import config_from_dict
from landmark_kaggle.errors import UserError
from landmark_kaggle.model.network import build_model, init_from_model_dir, load_model_dir
from landmark_kaggle.train.loop import train_model

STAGE = ["model.backbone=MobileNetV3Small", "model.dropout=0", "optim.warmup_epochs=0", "train.batch_size=8",
         "runtime.strategy=cpu", "runtime.precision=float32", "data.deterministic=true", "data.shuffle_buffer=32",
         "train.epochs=1", "train.steps_per_epoch=2"]


@pytest.fixture(scope="module")
@heavy
def stage_one(shards, tmp_path_factory):
    def train(base):
        train_model(str(shards), base / "model", config_from_dict({}, [*STAGE, "data.image_size=32"]), progress=False)
        return base / "model"
    return built_once(tmp_path_factory, "stage-one", train)


def _trainable(model):
    return [np.asarray(w) for w in model.trainable_weights]


@pytest.mark.slow
def test_stage_two_starts_from_stage_one_at_a_larger_size(shards, stage_one, tmp_path, capsys):
    out = tmp_path / "stage2"
    settings = [*STAGE, "data.image_size=48", "model.margin=0.3", "optim.learning_rate=1e-9", "optim.min_lr=1e-10",
                "optim.weight_decay=0"]
    args = ["train", "--data", str(shards), "--out", str(out), "--init-from", str(stage_one)]
    assert main([*args, *[a for s in settings for a in ("--set", s)]]) == 0
    assert "runtime: backend auto -> tensorflow" in capsys.readouterr().out
    one, two = load_model_dir(stage_one).model, load_model_dir(out).model
    assert one.input_shape == (None, 32, 32, 3) and two.input_shape == (None, 48, 48, 3)
    saved = json.loads((out / "config.json").read_text())
    assert saved["init_from"]["from"] == str(stage_one) and saved["init_from"]["reinitialised"] == []
    assert {"logits", one.layers[1].name} <= set(saved["init_from"]["copied"])
    for a, b in zip(_trainable(one), _trainable(two), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)
    fresh = build_model(config_from_dict({}, settings), 4)  # what stage two would have started from
    assert max(float(np.abs(a - b).max()) for a, b in zip(_trainable(one), _trainable(fresh), strict=True)) > 1e-4


def test_a_stage_over_more_classes_keeps_the_backbone_and_starts_the_classifier_fresh(stage_one):
    model = build_model(config_from_dict({}, [*STAGE, "data.image_size=48"]), 6)
    fresh_logits = model.get_layer("logits").get_weights()[0].copy()
    report = init_from_model_dir(model, stage_one)
    assert report["reinitialised"] == ["logits"]
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0], fresh_logits)
    one = load_model_dir(stage_one).model
    for a, b in zip(one.layers[1].get_weights(), model.layers[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = build_model(config_from_dict({}, [*STAGE, "data.image_size=32", "model.backbone=EfficientNetV2B0"]), 4)
    with pytest.raises(UserError, match="same model.backbone"):
        init_from_model_dir(other, stage_one)
