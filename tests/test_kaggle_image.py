"""Our wheel on Kaggle's GPU image: the stand-in venv (envs/kaggle-gpu.txt, Python 3.12, Keras 3.13.2, TF 2.20).

``bash envs/setup.sh`` builds ``.venv-kaggle-gpu`` (README command (b) runs it
before pytest); a test here fails, never skips, when it is missing or stale.
The wheel goes in with ``--no-deps``, as the kernel installs it, so our code
runs on the image's libraries. The model folder and indexes come from the
project environment (Keras 3.15.1): a whole-model ``model.keras`` from there
does not load in the stand-in, our model folder must, and the numbers must agree.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import LAYOUTS, competition_folder, kaggle_input_tree, run_kernel, standin_python

from landmark_kaggle.kaggle import kernels
from landmark_kaggle.paths import COMPETITION

REPO = Path(__file__).resolve().parents[1]
# What the issue lists for Kaggle's GPU image (envs/kaggle-gpu.txt says where each comes from).
IMAGE = {"python": "3.12", "tensorflow": "2.20.0", "keras": "3.13.2", "numpy": "2.0.2", "pandas": "2.2.2",
         "sklearn": "1.6.1", "cv2": "4.13.0", "google_crc32c": "1.8.0"}
# Largest difference allowed between the two environments (TF 2.21 + Keras 3.15.1 vs TF 2.20 + Keras 3.13.2,
# same weights and images): cosines and unit embeddings are float32 in [-1, 1].
TOLERANCE = 1e-4

PROBE = """
import json, sys
import numpy as np
model_dir, images, emb_dir, v2s_dir, out = sys.argv[1:6]
import cv2, google_crc32c, keras, numpy, pandas, sklearn, tensorflow
from importlib.metadata import version
from landmark_kaggle.data import pipeline
from landmark_kaggle.infer.embedder import iterate_batches, load_for_inference
from landmark_kaggle.model.network import load_model_dir
versions = {"python": "%d.%d" % sys.version_info[:2], "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__,
            "sklearn": sklearn.__version__, "cv2": cv2.__version__, "google_crc32c": version("google-crc32c"),
            "package": __import__("landmark_kaggle").__file__}
bundle = load_for_inference(model_dir)
ids, files, _ = pipeline.list_images(images)
got = {}
for batch_ids, (cos, emb) in iterate_batches(bundle.embed_fn, pipeline.image_folder_dataset(ids, files,
                                             bundle.config.data), 8):
    got.update({i: (c, e) for i, c, e in zip(batch_ids, cos, emb)})
order = sorted(got)
vectors = np.random.default_rng(0).normal(size=(5, 24)).astype("float32")
emb_net = load_model_dir(emb_dir)
emb_cos = emb_net.model.predict(vectors, verbose=0) / emb_net.config.model.scale
pixels = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
v2s = load_model_dir(v2s_dir)
v2s_cos = v2s.model.predict(pixels, verbose=0) / v2s.config.model.scale
np.savez(out, ids=np.array(order), cos=np.stack([got[i][0] for i in order]),
         emb=np.stack([got[i][1] for i in order]), emb_cos=emb_cos, v2s_cos=v2s_cos)
keras_file = None
try:
    keras.saving.load_model(model_dir + ".keras")
except Exception as exc:
    keras_file = f"{type(exc).__name__}: {exc}"
print(json.dumps({"versions": versions, "whole_model_keras": keras_file}))
"""


@pytest.fixture(scope="module")
def standin() -> Path:
    """The stand-in's python; missing or built from an older envs/kaggle-gpu.txt is a failure, not a skip."""
    return standin_python("gpu")


@pytest.fixture(scope="module")
def competition(tmp_path_factory, realdata) -> Path:
    """The 13 real GLDv2 test photos as a competition folder (test/a/b/c/<id>.jpg + sample_submission.csv)."""
    return competition_folder(tmp_path_factory.mktemp("comp") / COMPETITION, realdata)


def test_the_wheel_installs_on_python_311_to_313(wheel):
    from packaging.specifiers import SpecifierSet

    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    spec = SpecifierSet(next(ln.split(":", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Python:")))
    # Kaggle's GPU image is on 3.12; Colab, its base, moved to 3.13 in August 2026.
    assert all(v in spec for v in ("3.11.7", "3.12.1", "3.13.0")) and "3.10.9" not in spec


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_the_model_folder_loads_and_agrees_on_kaggles_image(standin, wheel, world, competition, tmp_path):
    import keras

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.data.gld import make_label_map
    from landmark_kaggle.model.network import build_embedding_model, build_model, load_model_dir, save_model_dir

    # The same network as a whole-model file, as the project's Keras writes it: the format that does not travel.
    load_model_dir(world["model"]).model.save(tmp_path / "model.keras")
    model_dir = tmp_path / "model"
    model_dir.symlink_to(world["model"], target_is_directory=True)
    cfg = config_from_dict({"model": {"embedding_dim": 16}})
    keras.utils.set_random_seed(4)
    save_model_dir(build_embedding_model(cfg, 24, 5), cfg, make_label_map(np.arange(5) + 11), tmp_path / "emb")
    # The production backbone with the custom layers' own weights (GeM's p, sub-centres), random and tiny.
    cfg = config_from_dict({"data": {"image_size": 32}, "model": {"pooling": "gem", "subcenters": 2,
                                                                 "embedding_dim": 16}})
    save_model_dir(build_model(cfg, 4), cfg, make_label_map(np.arange(4) + 3), tmp_path / "v2s")
    target = tmp_path / "site"
    subprocess.run([str(standin), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(target), str(wheel)], check=True, env=_clean_env())
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    runs = {}
    for name, python, env in [("project", sys.executable, _clean_env(PYTHONPATH=str(REPO / "src"))),
                              ("kaggle", str(standin), _clean_env(PYTHONPATH=str(target)))]:
        out = tmp_path / f"{name}.npz"
        proc = subprocess.run([python, str(probe), str(model_dir), str(competition / "test"), str(tmp_path / "emb"),
                               str(tmp_path / "v2s"), str(out)], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        runs[name] = (json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out))
    (project, a), (kaggle, b) = runs["project"], runs["kaggle"]
    assert {k: v for k, v in kaggle["versions"].items() if k != "package"} == IMAGE
    assert kaggle["versions"]["package"].startswith(str(target))  # our code from the wheel, not the checkout
    assert project["versions"]["keras"] != IMAGE["keras"]
    # Keras's own format from the project does not load on the image (the reason for the weights file) ...
    assert project["whole_model_keras"] is None and "input_axes" in kaggle["whole_model_keras"]
    # ... our folder does, and gives the same numbers.
    assert list(a["ids"]) == list(b["ids"]) and len(a["ids"]) == 13
    diffs = {key: float(np.abs(a[key] - b[key]).max()) for key in ("cos", "emb", "emb_cos", "v2s_cos")}
    print("max |project - kaggle image|:", json.dumps(diffs))
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert (a["cos"].argmax(1) == b["cos"].argmax(1)).all()


@pytest.fixture(scope="module")
def project_submission(world, competition, tmp_path_factory) -> pd.DataFrame:
    """The same submission made in the project environment, for comparison."""
    from landmark_kaggle.evaluate.submission import read_submission
    from landmark_kaggle.infer.predict import predict

    out = tmp_path_factory.mktemp("project") / "submission.csv"
    predict(world["model"], out, images=competition / "test", ids_csv=competition / "sample_submission.csv",
            index=world["index"], distractors=world["distractors"])
    return read_submission(out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_submission_kernel_scores_the_real_photos_on_kaggles_image(standin, wheel, world, competition,
                                                                   project_submission, layout, tmp_path):
    from landmark_kaggle.evaluate.submission import read_submission, validate_submission

    inp = tmp_path / "kaggle" / "input"
    placed = kaggle_input_tree(inp, layout, {
        COMPETITION: ("competition", competition), kernels.WHEEL_DATASET: ("dataset", wheel.parent),
        kernels.MODEL_DATASET: ("model", world["model"]), kernels.INDEX_DATASET: ("dataset", world["index"]),
        kernels.DISTRACTOR_DATASET: ("dataset", world["distractors"])})
    working = tmp_path / "kaggle" / "working"
    proc = run_kernel("submission", inp, working, tmp_path / "rendered", python=standin)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("predict --kaggle: package "))
    assert "landmark_kaggle_" in line.split("package ", 1)[1].split(",", 1)[0]
    for key, name in (("model", kernels.MODEL_DATASET), ("index", kernels.INDEX_DATASET),
                      ("distractors", kernels.DISTRACTOR_DATASET)):
        assert f"{key} {placed[name]}," in line
    assert f"images {placed[COMPETITION] / 'test'}," in line and "retrieval on" in proc.stdout
    sub_path = working / "submission.csv"
    ids = pd.read_csv(competition / "sample_submission.csv", dtype=str)["id"].tolist()
    sub = read_submission(sub_path)
    validate_submission(sub, ids, source=sub_path)
    mine, theirs = sub.set_index("id").loc[ids], project_submission.set_index("id").loc[ids]
    assert (mine["landmark_id"] >= 0).all(), "every real photo decodes, so every id has a prediction"
    assert "13 predicted, 0 unreadable" in proc.stdout
    assert mine["landmark_id"].tolist() == theirs["landmark_id"].tolist()
    conf = np.abs(mine["confidence"].to_numpy() - theirs["confidence"].to_numpy())
    print(f"{layout}: max |confidence, project - kaggle image| = {conf.max():.2e}")
    assert conf.max() <= TOLERANCE
