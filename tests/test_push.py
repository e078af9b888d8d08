"""`kernels push`, `bundle` and `datasets` with the real kaggle client talking to a recording server on 127.0.0.1.

The server (``kaggle_server.py``, fixtures ``kaggle_server`` and ``kaggle_env`` in
conftest) answers as Kaggle's API does and records every request.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from kaggle_server import SECRET

from landmark_kaggle import kernelcli, kernels

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "landmark_kaggle.cli"]


def _cli(args, env, cwd):
    return subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _all_bytes(folder: Path):
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        yield str(path), path.read_bytes()
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    yield f"{path}!{name}", zf.read(name)


def test_push_submission_kernel_sends_code_metadata_and_sources(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "submission", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Kernel version 7 successfully pushed" in proc.stdout
    assert len(seen) == 1
    req = seen[0]
    assert req["path"] == "http://localhost/api/v1/kernels.KernelsApiService/SaveKernel"
    body = req["body"]
    assert body["slug"] == "alice/landmark-kaggle-submission"
    assert body["newTitle"] == "Landmark Kaggle Submission"
    # The launcher with the shared prelude pasted in: one self-contained script.
    assert body["text"] == kernels.render_code(REPO / "kernels" / "submission.py")
    assert not kernels.PRELUDE_IMPORT.search(body["text"]) and "def install_package()" in body["text"]
    assert body["language"] == "python" and body["kernelType"] == "script"
    assert body["enableGpu"] is True
    # Internet must be off in the competition kernel; an absent key would mean "on" to the server.
    assert body.get("enableInternet", None) is False
    assert body["competitionDataSources"] == ["landmark-recognition-2021"]
    assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel", "alice/landmark-kaggle-model",
                                          "alice/landmark-kaggle-index", "alice/landmark-kaggle-distractors"]
    # The key travelled only as HTTP auth, never inside what we wrote.
    assert "Authorization" in req["headers"]
    for where, data in _all_bytes(tmp_path / "k"):
        assert SECRET.encode() not in data, where


def test_push_train_kernel_with_accelerator_override(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "train", "--accelerator", "NvidiaTeslaT4", "--out", str(tmp_path / "k")],
                kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    body = seen[0]["body"]
    assert body["slug"] == "alice/landmark-kaggle-train"
    assert body["machineShape"] == "NvidiaTeslaT4"
    assert body["text"] == kernels.render_code(REPO / "kernels" / "train" / "train.py")
    assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel", "alice/landmark-kaggle-tfrec"]
    rendered = json.loads((tmp_path / "k" / "train" / "kernel-metadata.json").read_text())
    assert rendered["code_file"] == "train.py" and rendered["machine_shape"] == "NvidiaTeslaT4"
    # Training kernels may use the internet (ImageNet weights); only the submission kernel is offline.
    assert body["enableInternet"] is True and body.get("kernelDataSources", []) == []


def test_push_train_continue_attaches_the_kernels_own_last_output(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "train", "--continue", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    body = seen[0]["body"]
    assert body["slug"] == "alice/landmark-kaggle-train"
    assert body["kernelDataSources"] == ["alice/landmark-kaggle-train"]
    assert body["enableTpu"] is True and body["machineShape"] == "TpuV5E8"
    proc = _cli(["kernels", "push", "submission", "--continue", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "--continue is for the train kernel" in proc.stderr and len(seen) == 1


def test_an_error_from_kaggle_is_one_clear_line(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "submission", "--user", "refused", "--out", str(tmp_path / "k")],
                kaggle_env, tmp_path)
    assert len(seen) == 1 and proc.returncode == 2
    assert "Notebook not found or you do not own it" in proc.stderr and "Traceback" not in proc.stderr


def test_user_name_from_kaggle_config_file(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    env = dict(kaggle_env)
    del env["KAGGLE_USERNAME"]
    cfg = Path(env["KAGGLE_CONFIG_DIR"])
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "bob", "key": SECRET}))
    proc = _cli(["kernels", "push", "build", "--out", str(tmp_path / "k")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert seen[0]["body"]["slug"] == "bob/landmark-kaggle-build"
    assert seen[0]["body"]["competitionDataSources"] == ["landmark-recognition-2021"]


def test_bad_metadata_is_refused_before_any_request(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    repo = tmp_path / "repo"
    (repo / "kernels").mkdir(parents=True)
    (repo / "kernels" / "submission.py").write_text("from prelude import run\n")
    shutil.copy2(REPO / kernels.PRELUDE, repo / kernels.PRELUDE)
    good = json.loads((REPO / "kernel-metadata.json").read_text())
    cases = {
        "title must be at least five": {"title": "Subm"},
        "enable_internet must be written out": {"enable_internet": None},
        "slugifies to": {"title": "Another Title Entirely"},
        "dataset source": {"dataset_sources": ["no-owner-here"]},
        "language must be one of": {"language": "julia"},
        "enable_gpu must be true or false": {"enable_gpu": "yes"},
    }
    for expected, change in cases.items():
        meta = {k: v for k, v in {**good, **change}.items() if v is not None}
        (repo / "kernel-metadata.json").write_text(json.dumps(meta))
        with pytest.raises(kernels.KernelError, match=expected):
            kernels.render_kernel("submission", "alice", tmp_path / "out", repo=repo)
    # The real client agrees on the rules it shares with us, and also sends nothing.
    folder = tmp_path / "client"
    folder.mkdir()
    (folder / "submission.py").write_text("print('hi')\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({**good, "id": "alice/landmark-kaggle-submission",
                                                             "code_file": "submission.py", "title": "Subm",
                                                             "dataset_sources": []}))
    proc = subprocess.run(kernelcli.kaggle_command() + ["kernels", "push", "-p", str(folder)], env=kaggle_env,
                          capture_output=True, text=True, timeout=120)
    assert "Title must be at least five characters" in proc.stdout + proc.stderr
    assert seen == []


def test_unrendered_template_and_missing_user_are_clear_errors(tmp_path, kaggle_env):
    env = dict(kaggle_env)
    del env["KAGGLE_USERNAME"]
    proc = _cli(["kernels", "push", "submission", "--dry-run", "--out", str(tmp_path / "k")], env, tmp_path)
    assert proc.returncode == 2
    assert "no Kaggle user name" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(kernels.KernelError, match="YOUR_KAGGLE_USERNAME"):
        kernels.validate_kernel_metadata(json.loads((REPO / "kernel-metadata.json").read_text()), REPO)


def _model_folder(path: Path) -> Path:
    """A real model folder of the embedding-only network (tiny: a Dense, a BatchNorm and the cosine classifier)."""
    import numpy as np

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.gld import make_label_map
    from landmark_kaggle.model import build_embedding_model, save_model_dir

    cfg = config_from_dict({"model": {"embedding_dim": 8}})
    return save_model_dir(build_embedding_model(cfg, 8, 2), cfg, make_label_map(np.array([5, 9])), path)


@pytest.mark.slow
def test_bundle_has_wheel_model_and_no_credentials(tmp_path, kaggle_env):
    model = _model_folder(tmp_path / "model")
    proc = _cli(["kernels", "bundle", "--model", str(model), "--out", str(tmp_path / "b")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    wheel_dir, model_dir = tmp_path / "b" / "landmark-kaggle-wheel", tmp_path / "b" / "landmark-kaggle-model"
    wheels = list(wheel_dir.glob("landmark_kaggle-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "landmark_kaggle/predict.py" in names and "tfrec_builder/cli.py" in names
    assert json.loads((wheel_dir / "dataset-metadata.json").read_text())["id"] == "alice/landmark-kaggle-wheel"
    meta = json.loads((model_dir / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/landmark-kaggle-model" and 6 <= len(meta["title"]) <= 50
    assert (model_dir / "model.weights.h5").read_bytes() == (model / "model.weights.h5").read_bytes()
    for where, data in _all_bytes(tmp_path / "b"):
        assert SECRET.encode() not in data, where
    # A key that sneaked into the model folder stops the bundle, naming the file.
    (model / "config.json").write_text(json.dumps({**json.loads((model / "config.json").read_text()), "note": SECRET}))
    proc = _cli(["kernels", "bundle", "--model", str(model), "--out", str(tmp_path / "b2")], kaggle_env, tmp_path)
    assert proc.returncode == 2
    assert "config.json contains your Kaggle API key" in proc.stderr


@pytest.mark.slow
def test_datasets_uploads_each_bundle_with_the_real_client(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    model = _model_folder(tmp_path / "model")
    bundles = tmp_path / "b"
    proc = _cli(["kernels", "bundle", "--model", str(model), "--out", str(bundles)], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(["kernels", "datasets", "--out", str(bundles), "--message", "v2 weights"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "uploaded 2 datasets" in proc.stdout
    uploaded = {r["path"].rsplit("/", 1)[-1]: r["body"] for r in seen if r["method"] == "PUT"}
    starts = [r["body"] for r in seen if r["path"].endswith("/StartBlobUpload")]
    versions = [r for r in seen if r["path"].endswith("/CreateDatasetVersion")]
    assert len(versions) == 2
    names = sorted(s["name"] for s in starts)
    wheel = next((bundles / "landmark-kaggle-wheel").glob("*.whl"))
    assert names == sorted([wheel.name, "config.json", "label_map.csv", "model.weights.h5"])
    assert sorted(len(b) for b in uploaded.values()) == sorted(
        p.stat().st_size for p in [wheel, *(bundles / "landmark-kaggle-model").glob("[cml]*.*")])
    bodies = [v["body"] for v in versions]
    assert sorted((b["ownerSlug"], b["datasetSlug"]) for b in bodies) == [
        ("alice", "landmark-kaggle-model"), ("alice", "landmark-kaggle-wheel")]
    assert all(b["body"]["versionNotes"] == "v2 weights" for b in bodies)
    for r in seen:
        assert SECRET not in json.dumps(r["body"] if r["method"] == "POST" else ""), r["path"]
