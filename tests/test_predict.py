"""`landmark-kaggle predict` on the embedded sample with a tiny trained model: a valid, scorable submission.

``inference_world`` (also used by test_retrieval and test_kernels) builds, once
per session under pytest's base temp: the sample dataset, training shards
written with ``records.encode_example``, an EfficientNetV2-B0 model trained for
a few epochs at 32 px (the trainer's own ``build_model``/``save_model_dir``),
a retrieval index of the training shards and an index of non-landmark views.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CLI = [sys.executable, "-m", "landmark_kaggle.cli"]


def _distractor_folder(out: Path, n: int = 24, seed: int = 5) -> Path:
    """Views of the sample's non-landmark photos (textures, text), never the test images themselves."""
    from landmark_kaggle.gld import image_path
    from landmark_kaggle.sample import DISTRACTOR_SOURCES, encode_jpeg, load_source, random_view

    rng = np.random.default_rng(seed)
    for i in range(n):
        src = load_source(*DISTRACTOR_SOURCES[i % len(DISTRACTOR_SOURCES)])
        view = random_view(src, rng, (48, 64))
        path = image_path(out, "test", f"{int(rng.integers(1 << 62)):016x}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(view, 90))
    return out


def write_shards(root: Path, out: Path, split: str = "train") -> Path:
    import tensorflow as tf

    from landmark_kaggle.gld import load_test_index, load_train_index, write_label_map
    from landmark_kaggle.records import encode_example, shard_name

    index = load_train_index(root) if split == "train" else load_test_index(root)
    lm = dict(zip(index.label_map["landmark_id"], index.label_map["label"], strict=True))
    out.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out / shard_name(split, 0, 1))) as writer:
        for row in index.frame.itertuples():
            data = Path(row.path).read_bytes()
            h, w = tf.io.decode_jpeg(data).shape[:2]
            writer.write(encode_example(image_bytes=data, image_id=row.id, label=int(lm.get(row.landmark_id, -1)),
                                        landmark_id=int(row.landmark_id), height=int(h), width=int(w)))
    if split == "train":
        write_label_map(index.label_map, out / "label_map.csv")
    return out


def _train_model(root: Path, out: Path) -> Path:
    import tensorflow as tf

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.gld import load_train_index
    from landmark_kaggle.model import build_model, save_model_dir
    from landmark_kaggle.pipeline import decode_image, eval_transform

    index = load_train_index(root)
    cfg = config_from_dict({"data": {"image_size": 32},
                            "model": {"backbone": "EfficientNetV2B0", "embedding_dim": 32, "dropout": 0.0},
                            "train": {"learning_rate": 3e-3, "warmup_epochs": 0, "epochs": 12},
                            "inference": {"batch_size": 16, "topk_neighbours": 3}})
    x = np.stack([eval_transform(decode_image(tf.io.read_file(p)), cfg.data).numpy() for p in index.frame["path"]])
    y = index.frame["label"].to_numpy()
    model = build_model(cfg, len(index.label_map), steps_per_epoch=-(-len(x) // 8))
    model.fit(x, y, batch_size=8, epochs=cfg.train.epochs, verbose=0, shuffle=True)
    return save_model_dir(model, cfg, index.label_map, out)


def inference_world(base: Path) -> dict:
    """Build (or reuse, within one pytest session) sample + shards + model + indexes under base."""
    import keras

    from landmark_kaggle.retrieval import build_index
    from landmark_kaggle.sample import make_sample

    world = {"root": base / "sample", "tfrec": base / "tfrec", "model": base / "model",
             "index": base / "index", "distractors": base / "distractors"}
    if (base / "done").is_file():
        return world
    if base.exists():
        shutil.rmtree(base)
    keras.utils.set_random_seed(0)
    make_sample(world["root"], num_classes=6, max_per_class=12, image_size=(48, 64), seed=0)
    write_shards(world["root"], world["tfrec"])
    _train_model(world["root"], world["model"])
    build_index(world["model"], world["index"], data=str(world["tfrec"]))
    build_index(world["model"], world["distractors"], images=str(_distractor_folder(base / "distractor_images")))
    (base / "done").write_text("ok")
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return inference_world(tmp_path_factory.getbasetemp() / "inference_world")


def run_cli(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


def score_json(solution, submission) -> dict:
    proc = run_cli("score", "--solution", solution, "--submission", submission, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_predict_matches_the_model_forward_pass(world, tmp_path):
    import tensorflow as tf

    from landmark_kaggle.model import load_model_dir
    from landmark_kaggle.pipeline import decode_image, eval_transform
    from landmark_kaggle.predict import predict
    from landmark_kaggle.submission import read_submission

    out = tmp_path / "submission.csv"
    summary = predict(world["model"], out, images=world["root"] / "test")
    assert summary["retrieval"] is False and summary["images_per_second"] > 0
    sub = read_submission(out).set_index("id")
    bundle = load_model_dir(world["model"])
    files = sorted((world["root"] / "test").rglob("*.jpg"))
    x = np.stack([eval_transform(decode_image(tf.io.read_file(str(p))), bundle.config.data).numpy() for p in files])
    cos = bundle.model.predict(x, verbose=0) / bundle.config.model.scale
    want_lid = bundle.label_map["landmark_id"].to_numpy()[cos.argmax(1)]
    ids = [p.stem for p in files]
    assert sub.loc[ids, "landmark_id"].tolist() == want_lid.tolist()
    np.testing.assert_allclose(sub.loc[ids, "confidence"].to_numpy(), cos.max(1), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_unreadable_images_get_empty_rows_and_are_counted(world, tmp_path, capsys):
    from landmark_kaggle.gld import image_path
    from landmark_kaggle.submission import read_submission, validate_submission

    root = tmp_path / "data"
    shutil.copytree(world["root"] / "test", root / "test")
    corrupt, empty, missing = "ab" * 8, "cd" * 8, "ef" * 8
    for bad, data in ((corrupt, b"\xff\xd8\xff not really a jpeg"), (empty, b"")):
        path = image_path(root, "test", bad)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "test" / "notes.jpg").write_bytes(b"not an id")
    ids = pd.read_csv(world["root"] / "sample_submission.csv", dtype=str)["id"].tolist() + [corrupt, empty, missing]
    pd.DataFrame({"id": ids, "landmarks": ""}).to_csv(root / "sample_submission.csv", index=False)
    out = tmp_path / "submission.csv"
    from landmark_kaggle.cli import main

    assert main(["predict", "--model", str(world["model"]), "--images", str(root / "test"),
                 "--ids", str(root / "sample_submission.csv"), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "3 unreadable" in summary and "1 files skipped" in summary and "images/s" in summary
    sub = read_submission(out)
    validate_submission(sub, ids, source=out)
    blank = set(sub.loc[sub["landmark_id"] < 0, "id"])
    assert blank == {corrupt, empty, missing}
    report = json.loads(out.with_name("submission.predict.json").read_text())
    assert report["images"] == len(ids) and report["unreadable"] == 3 and report["predicted"] == len(ids) - 3


@pytest.mark.slow
def test_tfrec_input_gives_the_same_submission_as_images(world, tmp_path):
    from landmark_kaggle.predict import predict

    shards = write_shards(world["root"], tmp_path / "test_shards", split="test")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict(world["model"], a, images=world["root"] / "test")
    predict(world["model"], b, tfrec=str(shards / "test-*.tfrec"))
    left, right = pd.read_csv(a).set_index("id").sort_index(), pd.read_csv(b).set_index("id").sort_index()
    assert left.index.tolist() == right.index.tolist()
    la = left["landmarks"].str.split(" ", expand=True)
    ra = right["landmarks"].str.split(" ", expand=True)
    assert la[0].tolist() == ra[0].tolist()
    np.testing.assert_allclose(la[1].astype(float), ra[1].astype(float), atol=1e-5)


@pytest.mark.slow
def test_retrieval_and_suppression_beat_the_classifier_alone(world, tmp_path):
    from landmark_kaggle.predict import predict
    from landmark_kaggle.submission import read_solution, read_submission, score

    solution = read_solution(world["root"] / "solution.csv")
    runs = {
        "classifier": {},
        "retrieval": {"index": world["index"]},
        "retrieval+suppression": {"index": world["index"], "distractors": world["distractors"]},
    }
    gaps = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.csv"
        summary = predict(world["model"], out, images=world["root"] / "test", **extra)
        assert summary["retrieval"] is ("index" in extra)
        gaps[name] = score(solution, read_submission(out))["gap"]
    print("GAP on the sample:", json.dumps(gaps))
    assert all(0.0 <= g <= 1.0 for g in gaps.values())
    assert gaps["retrieval"] > gaps["classifier"]
    assert gaps["retrieval+suppression"] > gaps["classifier"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    from landmark_kaggle.cli import main

    assert main(["predict", "--model", str(tmp_path / "nope"), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "model.keras" in err and "Traceback" not in err
    assert main(["predict", "--images", str(tmp_path)]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--images", str(tmp_path), "--set", "data.image_size=64"]) == 2
    assert "only changes inference.* settings" in capsys.readouterr().err


@pytest.mark.slow
def test_inference_settings_are_checked(world, tmp_path):
    from landmark_kaggle.config import ConfigError
    from landmark_kaggle.predict import predict

    with pytest.raises(ConfigError, match="inference.retrieval_weight"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test",
                overrides=["inference.retrieval_weight=1.5"])
