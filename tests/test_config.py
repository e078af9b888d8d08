"""Config: defaults, YAML/JSON loading, --set overrides with type coercion, and errors that name the field."""

import json

import pytest

from landmark_kaggle.config import Config, ConfigError, config_from_dict, load_config, save_config


def test_defaults_follow_the_poster():
    cfg = load_config()
    assert cfg.model.backbone == "EfficientNetV2S"
    assert (cfg.model.scale, cfg.model.margin) == (30.0, 0.5)
    assert cfg.model.pooling == "avg"


def test_overrides_are_coerced_to_the_field_type():
    cfg = load_config(overrides=["train.epochs=3", "model.dropout=0.1", "data.deterministic=true",
                                 "model.backbone=EfficientNetV2B0"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.dropout == pytest.approx(0.1)
    assert cfg.data.deterministic is True
    assert cfg.model.backbone == "EfficientNetV2B0"


def test_yaml_then_override(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 16\nmodel:\n  pooling: gem\n")
    cfg = load_config(path, ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.pooling) == (2, 16, "gem")


def test_json_round_trip(tmp_path):
    cfg = load_config(overrides=["train.epochs=4", "model.subcenters=3"])
    out = save_config(cfg, tmp_path / "config.json", extra={"num_classes": 9})
    data = json.loads(out.read_text())
    assert data["num_classes"] == 9
    data.pop("num_classes")
    assert config_from_dict(data) == cfg


@pytest.mark.parametrize("override, field", [
    ("train.epochs=0", "train.epochs"),
    ("model.pooling=max", "model.pooling"),
    ("runtime.strategy=gpu", "runtime.strategy"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("data.deterministic=maybe", "data.deterministic"),
    ("train.nosuch=1", "train.nosuch"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key"):
        load_config(overrides=["epochs=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["train.epochs"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  \"train\": \n}")
    with pytest.raises(ConfigError, match="bad.json: line 3"):
        load_config(bad)
    flat = tmp_path / "flat.yaml"
    flat.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(flat)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 2  # type: ignore[misc]


def test_a_config_written_before_the_sections_split_still_loads(tmp_path):
    # config.json as model folders and checkpoints of the first version wrote it: one mixed train section.
    old = {"data": {"image_size": 64},
           "train": {"epochs": 3, "batch_size": 8, "learning_rate": 0.01, "decay": "cosine", "strategy": "cpu",
                     "precision": "float32", "time_budget": "1h", "checkpoint_every_steps": 5, "class_sample": 0.2}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = load_config(tmp_path / "config.json")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.image_size) == (3, 8, 64)
    assert (cfg.optim.learning_rate, cfg.optim.decay) == (0.01, "cosine")
    assert (cfg.runtime.strategy, cfg.runtime.precision) == ("cpu", "float32")
    assert (cfg.session.time_budget, cfg.session.checkpoint_every_steps) == ("1h", 5)
    assert cfg.embeddings.class_sample == 0.2
    # Written back, it is the new layout, and it loads to the same settings.
    save_config(cfg, tmp_path / "new.json")
    assert "learning_rate" not in json.loads((tmp_path / "new.json").read_text())["train"]
    assert load_config(tmp_path / "new.json") == cfg


def test_an_old_key_on_the_command_line_says_where_it_went():
    with pytest.raises(ConfigError, match=r"train.strategy is now runtime.strategy"):
        config_from_dict({}, ["train.strategy=cpu"])
