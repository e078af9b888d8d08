"""`kernels push`, `bundle` and `datasets` with the real kaggle client talking to a recording server on 127.0.0.1.

The server (``kaggle_server.py``, fixtures ``kaggle_server`` and ``kaggle_env`` in
conftest) answers as Kaggle's API does and records every request.
"""

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from helpers import run_cli
from kaggle_server import SECRET, TOKEN

from landmark_kaggle.kaggle import command as kernelcli
from landmark_kaggle.kaggle import credentials, kernels

REPO = Path(__file__).resolve().parents[1]


def _cli(args, env, cwd):
    return run_cli(*args, env=env, cwd=cwd, timeout=300)


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
    assert body["enableGpu"] is True and body["machineShape"] == "NvidiaTeslaT4"
    # Internet must be off in the competition kernel; an absent key would mean "on" to the server.
    assert body.get("enableInternet", None) is False
    assert body["competitionDataSources"] == ["landmark-recognition-2021"]
    assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel", "alice/landmark-kaggle-model",
                                          "alice/landmark-kaggle-index", "alice/landmark-kaggle-distractors"]
    # The key travelled only as HTTP auth, never inside what we wrote.
    assert "Authorization" in req["headers"]
    for where, data in _all_bytes(tmp_path / "k"):
        assert SECRET.encode() not in data, where


PARTS = [f"alice/landmark-kaggle-build-write-part-{k}" for k in (1, 2)]


def test_push_train_kernel_with_accelerator_override(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "train", "--shards", "2", "--accelerator", "NvidiaTeslaT4",
                 "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    body = seen[0]["body"]
    assert body["slug"] == "alice/landmark-kaggle-train"
    # The machine and the flags that go with it: a GPU kernel now, no longer a TPU one.
    assert (body["machineShape"], body["enableGpu"], body["enableTpu"]) == ("NvidiaTeslaT4", True, False)
    assert body["text"] == kernels.render_code(REPO / "kernels" / "train" / "train.py")
    assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel"] and body["kernelDataSources"] == PARTS
    rendered = json.loads((tmp_path / "k" / "train" / "kernel-metadata.json").read_text())
    assert rendered["code_file"] == "train.py" and rendered["machine_shape"] == "NvidiaTeslaT4"
    assert (rendered["enable_gpu"], rendered["enable_tpu"]) == (True, False)
    # Training kernels may use the internet (ImageNet weights); only the submission kernel is offline.
    assert body["enableInternet"] is True
    # And back: TpuV5E8 on the submission kernel's GPU metadata.
    proc = _cli(["kernels", "push", "build-embed", "--accelerator", "TpuV5E8", "--out", str(tmp_path / "k")],
                kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (seen[1]["body"]["machineShape"], seen[1]["body"]["enableGpu"], seen[1]["body"]["enableTpu"]) == (
        "TpuV5E8", False, True)
    assert "on TpuV5E8" in proc.stdout


def test_push_train_continue_keeps_the_shards_machine_and_args_of_the_last_push(tmp_path, kaggle_env,
                                                                                 kaggle_server):
    _, seen = kaggle_server
    out = ["--out", str(tmp_path / "k")]
    # No shards and nothing to continue from: refused before anything is sent.
    for args in (["train"], ["train", "--continue"]):
        proc = _cli(["kernels", "push", *args, *out], kaggle_env, tmp_path)
        assert proc.returncode == 2 and "would run with no shards attached" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert seen == []
    proc = _cli(["kernels", "push", "train", "--shards", "2", "--accelerator", "NvidiaTeslaT4",
                 "--args", "--set train.epochs=20", *out], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    record = json.loads((tmp_path / "k" / "train" / kernelcli.PUSH_RECORD).read_text())
    assert record["shards"] == {"kernels": PARTS, "datasets": []} and record["accelerator"] == "NvidiaTeslaT4"
    assert record["kernel_args"] == "--set train.epochs=20" and record["version"] == 7
    proc = _cli(["kernels", "push", "train", "--continue", *out], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    first, again = seen[0]["body"], seen[1]["body"]
    assert again["slug"] == "alice/landmark-kaggle-train"
    # The same parts, plus the kernel's own last output; the same GPU and options.
    assert again["kernelDataSources"] == ["alice/landmark-kaggle-train", *PARTS]
    assert first["kernelDataSources"] == PARTS
    assert (again["machineShape"], again["enableGpu"], again["enableTpu"]) == ("NvidiaTeslaT4", True, False)
    assert again["text"] == first["text"] and "'--set train.epochs=20'" in again["text"]
    # What is given again wins over the record.
    proc = _cli(["kernels", "push", "train", "--continue", "--accelerator", "TpuV5E8", "--shards", "3", *out],
                kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    third = seen[2]["body"]
    assert third["machineShape"] == "TpuV5E8" and third["enableTpu"] is True
    assert third["kernelDataSources"] == ["alice/landmark-kaggle-train", *PARTS,
                                          "alice/landmark-kaggle-build-write-part-3"]
    proc = _cli(["kernels", "push", "submission", "--continue", *out], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "--continue is for the train and build-embed kernels" in proc.stderr
    assert len(seen) == 3


def test_accelerators_retired_unknown_and_pinned_images_are_refused(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    for shape, said in (("NvidiaTeslaP100", "NvidiaTeslaP100 is retired (kaggle 2.2.5: Kaggle runs the session on "
                                            "NvidiaTeslaT4 instead); ask for NvidiaTeslaT4"),
                        ("TpuV38", "ask for TpuV5E8"), ("gpu", "'gpu' is not one of NvidiaTeslaT4, TpuV5E8")):
        proc = _cli(["kernels", "push", "build-embed", "--accelerator", shape, "--out", str(tmp_path / "k")],
                    kaggle_env, tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert seen == []
    repo = tmp_path / "repo"
    (repo / "kernels").mkdir(parents=True)
    shutil.copy2(REPO / "kernels" / "submission.py", repo / "kernels" / "submission.py")
    shutil.copy2(REPO / kernels.PRELUDE, repo / kernels.PRELUDE)
    good = json.loads((REPO / "kernel-metadata.json").read_text())
    cases = {  # what `kaggle kernels pull -m` writes, and hand edits that lose the machine
        "pins the kernel's image": {"docker_image": "gcr.io/kaggle-gpu-images/python:v160"},
        "docker_image_pinning_type original pins": {"docker_image_pinning_type": "original"},
        "enable_gpu without machine_shape": {"machine_shape": None},
        "machine_shape TpuV5E8 is a TPU, but enable_gpu is True": {"machine_shape": "TpuV5E8"},
    }
    for expected, change in cases.items():
        meta = {k: v for k, v in {**good, **change}.items() if v is not None}
        (repo / "kernel-metadata.json").write_text(json.dumps(meta))
        with pytest.raises(kernels.KernelError, match=expected):
            kernels.render_kernel("submission", "alice", tmp_path / "out", repo=repo)
    # Asked for: a pinned image goes through.
    (repo / "kernel-metadata.json").write_text(json.dumps({**good, "docker_image_pinning_type": "original"}))
    folder = kernels.render_kernel("submission", "alice", tmp_path / "out", repo=repo, keep_image=True)
    assert json.loads((folder / "kernel-metadata.json").read_text())["docker_image_pinning_type"] == "original"


def test_an_error_from_kaggle_is_one_clear_line(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "submission", "--user", "refused", "--out", str(tmp_path / "k")],
                kaggle_env, tmp_path)
    assert len(seen) == 1 and proc.returncode == 2
    assert "Notebook not found or you do not own it" in proc.stderr and "Traceback" not in proc.stderr


def _token_env(kaggle_env, tmp_path):
    """kaggle 2.x's login: no KAGGLE_USERNAME, no key, no kaggle.json; only an access token."""
    env = {k: v for k, v in kaggle_env.items() if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    (tmp_path / "home" / ".kaggle").mkdir(parents=True, exist_ok=True)
    return env


def test_user_name_from_an_access_token(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    env = _token_env(kaggle_env, tmp_path)
    token_file = tmp_path / "home" / ".kaggle" / "access_token"
    token_file.write_text(TOKEN + "\n")
    proc = _cli(["kernels", "push", "submission", "--out", str(tmp_path / "k")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # The client asked Kaggle whose token it is; the push went out under that name.
    assert world.posts("IntrospectToken")[0] == {"token": TOKEN}
    assert world.posts("SaveKernel")[0]["slug"] == "alice/landmark-kaggle-submission"
    # KAGGLE_API_TOKEN, as the token or as a file holding it, for another user.
    world.tokens["KGAT_bob_0123456789abcdef01234567"] = "bob"
    token_file.unlink()
    for value in ("KGAT_bob_0123456789abcdef01234567", str(tmp_path / "bob-token")):
        (tmp_path / "bob-token").write_text("KGAT_bob_0123456789abcdef01234567")
        proc = _cli(["kernels", "push", "build-embed", "--out", str(tmp_path / "k")],
                    {**env, "KAGGLE_API_TOKEN": value}, tmp_path)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert world.posts("SaveKernel")[-1]["slug"] == "bob/landmark-kaggle-build-embed"
    # A token Kaggle does not know: one clear line, nothing pushed.
    pushes = len(world.posts("SaveKernel"))
    proc = _cli(["kernels", "push", "submission", "--out", str(tmp_path / "k")],
                {**env, "KAGGLE_API_TOKEN": "KGAT_expired_00000000000000000000"}, tmp_path)
    assert proc.returncode == 2 and "found no user for your access token" in proc.stderr
    assert "pass --user NAME" in proc.stderr and "Traceback" not in proc.stderr
    assert len(world.posts("SaveKernel")) == pushes
    for r in seen:
        assert TOKEN not in json.dumps(r["body"] if r["method"] == "POST" and "Introspect" not in r["path"]
                                       else ""), r["path"]


def test_every_credential_is_scanned_for(tmp_path, kaggle_env, kaggle_server, monkeypatch):
    _, seen = kaggle_server
    env = _token_env(kaggle_env, tmp_path)
    (tmp_path / "home" / ".kaggle" / "access_token").write_text(TOKEN)
    # A token in what a push would send (here through --args) stops the push before it is sent.
    proc = _cli(["kernels", "push", "build-embed", "--args", f"--note {TOKEN}", "--out", str(tmp_path / "k")],
                env, tmp_path)
    assert proc.returncode == 2 and "build_embed.py contains your Kaggle API key or access token" in proc.stderr
    assert not [r for r in seen if r["path"].endswith("/SaveKernel")]
    # In a bundle folder: each way kaggle 2.x keeps a credential is looked for.
    folder = tmp_path / "bundle"
    folder.mkdir()
    for _where, secret, setup in (
            ("access_token", "KGAT_file_0123456789abcdef0123456",
             lambda s: (tmp_path / "home2" / ".kaggle" / "access_token").write_text(s)),
            ("KAGGLE_API_TOKEN", "KGAT_env_0123456789abcdef01234567",
             lambda s: monkeypatch.setenv("KAGGLE_API_TOKEN", s)),
            ("kaggle.json", "abcdef0123456789abcdef0123456789",
             lambda s: (tmp_path / "kcfg2" / "kaggle.json").write_text(json.dumps({"username": "a", "key": s}))),
            ("credentials.json", "refresh_0123456789abcdef01234567",  # what `kaggle auth login` keeps
             lambda s: (tmp_path / "home2" / ".kaggle" / "credentials.json").write_text(
                 json.dumps({"refresh_token": s, "access_token": "", "username": "carol"})))):
        monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
        monkeypatch.delenv("KAGGLE_KEY", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home2"))
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kcfg2"))
        for d in (tmp_path / "home2" / ".kaggle", tmp_path / "kcfg2"):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        (folder / "notes.txt").write_text(f"left here by mistake: {secret}\n")
        credentials.scan_for_credentials(folder)  # not a credential of this login yet: passes
        setup(secret)
        with pytest.raises(kernels.KernelError, match="notes.txt contains your Kaggle API key or access token"):
            credentials.scan_for_credentials(folder)
    # The OAuth login names its user on disk: no client to ask.
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    assert credentials.kaggle_username(ask_client=lambda: pytest.fail("asked the client")) == "carol"


def test_user_name_from_kaggle_config_file(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    env = dict(kaggle_env)
    del env["KAGGLE_USERNAME"]
    cfg = Path(env["KAGGLE_CONFIG_DIR"])
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "bob", "key": SECRET}))
    proc = _cli(["kernels", "push", "build-embed", "--out", str(tmp_path / "k")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert seen[0]["body"]["slug"] == "bob/landmark-kaggle-build-embed"
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
    from landmark_kaggle.data.gld import make_label_map
    from landmark_kaggle.model.network import build_embedding_model, save_model_dir

    cfg = config_from_dict({"model": {"embedding_dim": 8}})
    return save_model_dir(build_embedding_model(cfg, 8, 2), cfg, make_label_map(np.array([5, 9])), path)


def test_bundle_has_wheel_model_and_no_credentials(tmp_path, kaggle_env):
    model = _model_folder(tmp_path / "model")
    proc = _cli(["kernels", "bundle", "--model", str(model), "--out", str(tmp_path / "b")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    wheel_dir, model_dir = tmp_path / "b" / "landmark-kaggle-wheel", tmp_path / "b" / "landmark-kaggle-model"
    wheels = list(wheel_dir.glob("landmark_kaggle-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "landmark_kaggle/infer/predict.py" in names and "tfrec_builder/cli.py" in names
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


def test_datasets_uploads_each_bundle_with_the_real_client(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    model = _model_folder(tmp_path / "model")
    bundles = tmp_path / "b"
    proc = _cli(["kernels", "bundle", "--model", str(model), "--out", str(bundles)], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(["kernels", "datasets", "--out", str(bundles)], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "uploaded 2 datasets (2 created, 0 versioned)" in proc.stdout
    uploaded = {r["path"].rsplit("/", 1)[-1]: r["body"] for r in seen if r["method"] == "PUT"}
    starts = [r["body"] for r in seen if r["path"].endswith("/StartBlobUpload")]
    assert len([r for r in seen if r["path"].endswith("/CreateDataset")]) == 2
    names = sorted(s["name"] for s in starts)
    wheel = next((bundles / "landmark-kaggle-wheel").glob("*.whl"))
    assert names == sorted([wheel.name, "config.json", "label_map.csv", "model.weights.h5"])
    assert sorted(len(b) for b in uploaded.values()) == sorted(
        p.stat().st_size for p in [wheel, *(bundles / "landmark-kaggle-model").glob("[cml]*.*")])
    # The next upload makes new versions of the two, with the notes.
    proc = _cli(["kernels", "datasets", "--out", str(bundles), "--message", "v2 weights"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "uploaded 2 datasets (0 created, 2 versioned)" in proc.stdout
    versions = [r for r in seen if r["path"].endswith("/CreateDatasetVersion")]
    assert len(versions) == 2
    bodies = [v["body"] for v in versions]
    assert sorted((b["ownerSlug"], b["datasetSlug"]) for b in bodies) == [
        ("alice", "landmark-kaggle-model"), ("alice", "landmark-kaggle-wheel")]
    assert all(b["body"]["versionNotes"] == "v2 weights" for b in bodies)
    for r in seen:
        assert SECRET not in json.dumps(r["body"] if r["method"] == "POST" else ""), r["path"]


def test_push_build_embed_is_a_gpu_kernel_with_internet_that_continues_its_last_version(tmp_path, kaggle_env,
                                                                                      kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "build-embed", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    proc = _cli(["kernels", "push", "build-embed", "--continue", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "pushed alice/landmark-kaggle-build-embed version 8" in proc.stdout
    first, again = seen[0]["body"], seen[1]["body"]
    for body in (first, again):
        assert body["slug"] == "alice/landmark-kaggle-build-embed"
        assert body["enableGpu"] is True and body["enableInternet"] is True and body.get("enableTpu", False) is False
        assert body["machineShape"] == "NvidiaTeslaT4"
        assert body["competitionDataSources"] == ["landmark-recognition-2021"]
        assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel"]
        assert body["text"] == kernels.render_code(REPO / "kernels" / "build-embed" / "build_embed.py")
    assert not first.get("kernelDataSources")
    # --continue: the kernel's own last version's output is attached, so the store carries on.
    assert again["kernelDataSources"] == ["alice/landmark-kaggle-build-embed"]


def test_push_build_write_part_k_is_its_own_cpu_kernel(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    for k in (1, 3):
        proc = _cli(["kernels", "push", "build-write", "--part", str(k), "--out", str(tmp_path / "k")],
                    kaggle_env, tmp_path)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"kernels status build-write-part-{k}`" in proc.stdout
        assert kernels.kernel_ref(f"build-write-part-{k}", "alice") == f"alice/landmark-kaggle-build-write-part-{k}"
        record = json.loads((tmp_path / "k" / f"build-write-part-{k}" / kernelcli.PUSH_RECORD).read_text())
        assert record["kernel"] == f"alice/landmark-kaggle-build-write-part-{k}" and record["version"] == 7
    for k, req in zip((1, 3), seen, strict=True):
        body = req["body"]
        assert body["slug"] == f"alice/landmark-kaggle-build-write-part-{k}"
        assert body["newTitle"] == f"Landmark Kaggle Build Write Part {k}"
        assert body["enableGpu"] is False and body["enableInternet"] is False and not body.get("machineShape")
        assert body["competitionDataSources"] == ["landmark-recognition-2021"]
        assert body["kernelDataSources"] == ["alice/landmark-kaggle-build-embed"]
        assert f'PART = "{k}"' in body["text"] and '"--dataset-id", "alice/gldv2-tfrec-512"' in body["text"]
        assert kernels.PLACEHOLDER not in body["text"]
        compile(body["text"], "build_write.py", "exec")


def _parted_build(root: Path) -> Path:
    from landmark_kaggle.data.sample import make_sample
    from tfrec_builder.write import write_dataset

    make_sample(root / "gld", num_classes=4, max_per_class=8, image_size=(48, 64))
    write_dataset(root / "gld", root / "tfrec", image_size=56, shard_mb=0.004, val_fraction=0.25, workers=1,
                  progress=False, dataset_id="alice/gld-push-56", max_part_gb=0.000022)
    return root / "tfrec"


def test_push_train_attaches_the_shards_of_every_part(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "train", "--shards", "3", "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    body = seen[0]["body"]
    assert body["kernelDataSources"] == [f"alice/landmark-kaggle-build-write-part-{k}" for k in (1, 2, 3)]
    assert body["datasetDataSources"] == ["alice/landmark-kaggle-wheel"]
    # Parts built here and uploaded as datasets: their own ids.
    tfrec = _parted_build(tmp_path / "local")
    ids = [json.loads(p.read_text())["id"] for p in sorted(tfrec.glob("*/dataset-metadata.json"))]
    assert len(ids) >= 3
    proc = _cli(["kernels", "push", "train", "--shards", str(tfrec), "--continue", "--out", str(tmp_path / "k")],
                kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert seen[1]["body"]["datasetDataSources"] == ["alice/landmark-kaggle-wheel", *ids]
    assert seen[1]["body"]["kernelDataSources"] == ["alice/landmark-kaggle-train"]


def test_build_options_on_the_wrong_kernel_are_refused_before_any_request(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    for args, said in ((["train", "--part", "2"], "--part is for the build-write kernel"),
                       (["build-embed", "--shards", "3"], "--shards is for the train kernel"),
                       (["train", "--shards", "zero"], "neither a number of build-write parts nor a folder"),
                       (["build-write", "--part", "0"], "--part 0 must be 1 or more"),
                       (["build-write", "--continue"], "--continue is for the train and build-embed kernels")):
        proc = _cli(["kernels", "push", *args, "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert seen == []


def test_datasets_uploads_each_part_of_a_local_build(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    tfrec = _parted_build(tmp_path / "local")
    parts = sorted(p.parent for p in tfrec.glob("*/dataset-metadata.json"))
    assert len(parts) >= 3
    proc = _cli(["kernels", "datasets", "--parts", str(tfrec)], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"uploaded {len(parts)} datasets ({len(parts)} created, 0 versioned)" in proc.stdout
    creates = world.posts("CreateDataset")
    assert sorted((c["ownerSlug"], c["slug"]) for c in creates) == sorted(("alice", p.name) for p in parts)
    assert all(c["title"].startswith("GLDv2 TFRecords 56px part ") for c in creates)
    uploaded = sorted(r["body"]["name"] for r in seen if r["path"].endswith("/StartBlobUpload"))
    # Every file of every part folder but the metadata, which travels in the request (the .build/
    # bookkeeping is a sub-folder: the client skips it).
    assert uploaded == sorted(f.name for p in parts for f in p.iterdir()
                              if f.is_file() and f.name != "dataset-metadata.json")
    # Created once: the next upload of a part is a new version of it (the old `--new` changes nothing).
    proc = _cli(["kernels", "datasets", "--parts", str(parts[0]), "--new"], kaggle_env, tmp_path)
    assert proc.returncode == 0 and "(0 created, 1 versioned)" in proc.stdout, proc.stderr + proc.stdout


def _bundle_folder(root: Path, slug: str, user: str = "alice") -> Path:
    """A bundle folder as `kernels bundle` leaves it, as far as uploading goes: a file and its metadata."""
    folder = root / slug
    folder.mkdir(parents=True)
    (folder / "payload.bin").write_bytes(slug.encode())
    (folder / "dataset-metadata.json").write_text(json.dumps(kernels.dataset_metadata(slug, user)))
    return folder


def _part_folder(root: Path, k: int) -> Path:
    """A part of a local build (label map, a shard, its metadata), as `tfrec-builder write` leaves it."""
    folder = root / f"gldv2-tfrec-512-part-{k}"
    folder.mkdir(parents=True)
    (folder / "label_map.csv").write_text("label,landmark_id,count\n")
    (folder / "train-00000-of-00001.tfrec").write_bytes(b"")
    (folder / "dataset-metadata.json").write_text(json.dumps({"title": f"GLDv2 TFRecords 512px part {k}",
                                                              "id": f"alice/gldv2-tfrec-512-part-{k}",
                                                              "licenses": [{"name": "CC0-1.0"}]}))
    return folder


def test_datasets_creates_what_is_missing_and_versions_what_exists(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    bundles = tmp_path / "bundles"
    slugs = list(kernels.DATASET_TITLES)
    for slug in slugs:
        _bundle_folder(bundles, slug)

    def run(*args):
        before = len(seen)
        proc = _cli(["kernels", "datasets", *map(str, args)], kaggle_env, tmp_path)
        sent = seen[before:]
        made = sorted(r["body"]["slug"] for r in sent if r["path"].endswith("/CreateDataset"))
        versioned = sorted(r["body"]["datasetSlug"] for r in sent if r["path"].endswith("/CreateDatasetVersion"))
        return proc, made, versioned

    proc, made, versioned = run("--out", bundles)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert made == sorted(slugs) and versioned == []
    assert "uploaded 4 datasets (4 created, 0 versioned)" in proc.stdout
    assert all(f"alice/{s}: created" in proc.stdout for s in slugs)
    # Kaggle was asked about each one before it was created (`datasets create` asks once more itself).
    paths = [r["path"].rsplit("/", 1)[1] + ":" + (r["body"].get("datasetSlug") or r["body"].get("slug", ""))
             for r in seen if r["method"] == "POST"]
    for slug in slugs:
        assert paths.index(f"GetDatasetStatus:{slug}") < paths.index(f"CreateDataset:{slug}")
    proc, made, versioned = run("--out", bundles, "--message", "model v2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert made == [] and versioned == sorted(slugs)
    assert all(b["body"]["versionNotes"] == "model v2" for b in world.posts("CreateDatasetVersion"))
    assert "uploaded 4 datasets (0 created, 4 versioned)" in proc.stdout
    # Parts of a local build: a part added later is created, the others versioned.
    tfrec = tmp_path / "tfrec"
    for k in (1, 2):
        _part_folder(tfrec, k)
    proc, made, versioned = run("--parts", tfrec)
    assert proc.returncode == 0 and made == ["gldv2-tfrec-512-part-1", "gldv2-tfrec-512-part-2"] and not versioned
    _part_folder(tfrec, 3)
    proc, made, versioned = run("--parts", tfrec)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert made == ["gldv2-tfrec-512-part-3"]
    assert versioned == ["gldv2-tfrec-512-part-1", "gldv2-tfrec-512-part-2"]
    # One that fails (the key left in a file) is named; the others still go up; the exit status says so.
    (bundles / kernels.MODEL_DATASET / "notes.txt").write_text(SECRET)
    proc, made, versioned = run("--out", bundles)
    assert proc.returncode == 1, proc.stdout
    assert "alice/landmark-kaggle-model: failed:" in proc.stdout and "contains your Kaggle API key" in proc.stdout
    assert versioned == sorted(s for s in slugs if s != kernels.MODEL_DATASET) and made == []
    assert "uploaded 3 datasets (0 created, 3 versioned); FAILED: alice/landmark-kaggle-model" in proc.stdout


def test_args_travel_in_the_pushed_script(tmp_path, kaggle_env, kaggle_server):
    _, seen = kaggle_server
    proc = _cli(["kernels", "push", "build-embed", "--args", "--image-size 300 --batch-size 16",
                 "--out", str(tmp_path / "k")], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    text = seen[0]["body"]["text"]
    compile(text, "build_embed.py", "exec")
    line = next(x for x in text.splitlines() if x.endswith("# kernels push --args"))
    assert "'--image-size 300 --batch-size 16'" in line
    # After the prelude (which reads the variable when it runs the command), before the launcher's own code.
    assert text.index("# ---- end of kernels/prelude.py ----") < text.index(line) < text.index("sys.exit(run(")
