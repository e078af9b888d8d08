"""predict with the winners' options on the sample: the competition's own train set, restriction, every scoring
rule, flip TTA and a two-model ensemble, through the library, the CLI and the submission kernel.

The sample's test images are views of its training photos, so retrieval is
flattered here: these tests check that every combination runs and writes a
valid, scorable submission, not which one wins.
"""

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from helpers import CLI, chance_bar, kill_mid_run, run_kernel, score_json


def _competition(root, out, keep_landmarks=None, copies=1):
    """A competition folder: train.csv and train/ from the sample (some landmarks, each image ``copies`` times)."""
    from landmark_kaggle.data.gld import image_path

    train = pd.read_csv(root / "train.csv", dtype={"id": str})
    if keep_landmarks is not None:
        train = train[train["landmark_id"].isin(keep_landmarks)]
    rows = []
    for n in range(copies):
        for image_id, lid in zip(train["id"], train["landmark_id"], strict=True):
            new = image_id if n == 0 else hashlib.sha256(f"{n} {image_id}".encode()).hexdigest()[:16]
            dst = image_path(out, "train", new)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_path(root, "train", image_id), dst)
            rows.append((new, lid))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(out / "train.csv", index=False)
    return out


@pytest.mark.parametrize("rule", ["linear", "glr2020_1st", "glr2020_3rd"])
def test_every_rule_with_flip_restriction_and_the_ensemble(world, ensemble, rule, tmp_path):
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score, validate_submission
    from landmark_kaggle.infer.predict import predict

    lids = sorted(pd.read_csv(world["root"] / "train.csv")["landmark_id"].unique())
    comp = _competition(world["root"], tmp_path / "comp", keep_landmarks=lids[:4])
    out = tmp_path / "submission.csv"
    summary = predict([world["model"], ensemble["model_b"]], out, images=world["root"] / "test",
                      ids_csv=world["root"] / "sample_submission.csv", index=ensemble["index"],
                      distractors=ensemble["distractors"], competition=comp,
                      overrides=[f"inference.scoring={rule}", "inference.tta=flip", "inference.index_from=both",
                                 "inference.restrict_to_competition_train=true"])
    sub = read_submission(out)
    ids = pd.read_csv(world["root"] / "sample_submission.csv", dtype=str)["id"].tolist()
    validate_submission(sub, ids, source=out)
    assert set(sub.loc[sub["landmark_id"] >= 0, "landmark_id"]) <= set(lids[:4])
    gap = score(read_solution(world["root"] / "solution.csv"), sub)["gap"]
    # Restricted to 4 of the 6 landmarks, guessing among those 4 is the fair bar.
    keep = pd.read_csv(world["root"] / "train.csv")
    keep[keep["landmark_id"].isin(lids[:4])].to_csv(tmp_path / "kept.csv", index=False)
    assert gap > chance_bar(world["root"] / "solution.csv", tmp_path / "kept.csv")
    assert summary["no_prediction"] == 0
    n_comp = len(pd.read_csv(comp / "train.csv"))
    # The competition's images replace their copies in the bundled index; the other landmarks' rows are cut.
    assert summary["index_rows_duplicate"] == n_comp and summary["index_rows"] == n_comp
    assert summary["inference"]["scoring"] == rule and len(summary["models"]) == 2
    assert (tmp_path / "competition_index" / "index.json").is_file()
    if rule == "glr2020_3rd":
        assert any("--distractors" in n and "unused" in n for n in summary["notes"])


def test_the_competition_train_set_as_the_only_index(world, tmp_path):
    from landmark_kaggle.infer.predict import predict
    from landmark_kaggle.infer.retrieval import RetrievalIndex

    out = tmp_path / "s.csv"
    summary = predict(world["model"], out, images=world["root"] / "test", index=world["index"],
                      competition=world["root"], competition_index=tmp_path / "ci",
                      overrides=["inference.index_from=competition"])
    train = pd.read_csv(world["root"] / "train.csv", dtype={"id": str})
    built = RetrievalIndex(tmp_path / "ci")
    assert built.ids.tolist() == train["id"].tolist() and built.landmark_ids.tolist() == train["landmark_id"].tolist()
    assert summary["index_rows"] == len(train) and summary["retrieval"]
    assert any("--index" in n and "unused" in n for n in summary["notes"])
    # Embedded by the same model as the shards' index: the same vectors, image by image (tfrec vs JPEG, same bytes).
    bundle = RetrievalIndex(world["index"])
    order = {i: n for n, i in enumerate(bundle.ids.tolist())}
    a = np.asarray(built.matrix, np.float32)
    b = np.asarray(bundle.matrix, np.float32)[[order[i] for i in built.ids.tolist()]]
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_options_that_need_the_competition_folder_say_so(world, tmp_path):
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.infer.predict import predict

    for setting in ("inference.index_from=competition", "inference.restrict_to_competition_train=true"):
        with pytest.raises(UserError, match="need the competition folder: --competition DIR"):
            predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", overrides=[setting])
    with pytest.raises(UserError, match="index_from=both needs the bundled index"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", competition=world["root"],
                overrides=["inference.index_from=both"])
    with pytest.raises(UserError, match="no nonlandmark_sim.npy"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", index=world["index"],
                distractors=world["distractors"], overrides=["inference.scoring=glr2020_1st"])


@pytest.mark.slow
def test_a_killed_predict_resumes_the_competition_index(world, tmp_path):
    comp = _competition(world["root"], tmp_path / "comp", copies=8)
    total_rows = len(pd.read_csv(comp / "train.csv"))

    def command(folder, out):
        # Batch 2: chunks of 32 images, so the kill lands between chunk markers.
        return CLI + ["predict", "--model", str(world["model"]), "--images", str(world["root"] / "test"),
                      "--competition", str(comp), "--competition-index", str(folder), "--out", str(out),
                      "--set", "inference.index_from=competition", "--set", "inference.batch_size=2"]

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, tmp_path / "a.csv"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    chunks = -(-total_rows // 32)

    def markers():  # not a marker's temporary file (.00003.<pid>.tmp.json), which a kill can leave behind
        return sorted(p.name for p in (killed / "chunks").glob("[0-9]*.json"))

    done = kill_mid_run(proc, markers, lambda names: len(names) >= 1)  # read while frozen: what the kill left
    assert 1 <= len(done) < chunks, f"the kill should land mid-embedding ({len(done)} of {chunks} chunks)"
    assert markers() == done
    # The test images were answered before the train set was embedded: a complete submission is already there.
    from landmark_kaggle.evaluate.submission import read_submission, validate_submission

    ids = sorted(p.stem for p in (world["root"] / "test").rglob("*.jpg"))
    validate_submission(read_submission(tmp_path / "a.csv"), ids, source=tmp_path / "a.csv")
    # The finished chunks' markers dated to 2001: a chunk embedded again by the resumed run gets a new one.
    for name in done:
        os.utime(killed / "chunks" / name, ns=(10**18, 10**18))
    again = subprocess.run(command(killed, tmp_path / "a.csv"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    kept = [n for n in markers() if (killed / "chunks" / n).stat().st_mtime_ns == 10**18]
    assert kept == done and len(markers()) == chunks  # every finished chunk kept; only the others embedded
    fresh = subprocess.run(command(tmp_path / "fresh", tmp_path / "b.csv"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    np.testing.assert_allclose(np.load(killed / "matrix.npy").astype(np.float32),
                               np.load(tmp_path / "fresh" / "matrix.npy").astype(np.float32), atol=2e-3)
    assert json.loads((killed / "meta.json").read_text())["complete"] is True
    assert (pd.read_csv(tmp_path / "a.csv")["landmarks"].str.split().str[0].tolist()
            == pd.read_csv(tmp_path / "b.csv")["landmarks"].str.split().str[0].tolist())


def test_the_cli_takes_several_models(world, ensemble, tmp_path):
    from landmark_kaggle.cli import main

    out = tmp_path / "s.csv"
    assert main(["predict", "--model", str(world["model"]), "--model", str(ensemble["model_b"]),
                 "--images", str(world["root"] / "test"), "--index", str(ensemble["index"]), "--out", str(out),
                 "--set", "inference.tta=flip"]) == 0
    report = json.loads(out.with_name("s.predict.json").read_text())
    assert report["models"] == [str(world["model"]), str(ensemble["model_b"])] and report["retrieval"]


def test_submission_kernel_with_two_models_every_option(world, ensemble, tmp_path):
    """The kernel as Kaggle runs it, two model datasets attached, settings from the models' config.json."""
    from landmark_kaggle.evaluate.submission import read_submission, validate_submission
    from landmark_kaggle.kaggle import kernels
    from landmark_kaggle.paths import COMPETITION

    inp, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    comp = inp / COMPETITION
    shutil.copytree(world["root"] / "test", comp / "test")
    shutil.copy2(world["root"] / "sample_submission.csv", comp / "sample_submission.csv")
    lids = sorted(pd.read_csv(world["root"] / "train.csv")["landmark_id"].unique())
    _competition(world["root"], comp, keep_landmarks=lids[:4])
    kernels.bundle(inp, "alice", model_dir=world["model"], index_dir=ensemble["index"],
                   distractors_dir=ensemble["distractors"])
    shutil.copytree(ensemble["model_b"], inp / f"{kernels.MODEL_DATASET}-2")
    settings = {"scoring": "glr2020_1st", "tta": "flip", "index_from": "both", "restrict_to_competition_train": True}
    for folder in (inp / kernels.MODEL_DATASET, inp / f"{kernels.MODEL_DATASET}-2"):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["inference"].update(settings)
        (folder / "config.json").write_text(json.dumps(cfg))
    proc = run_kernel("submission", inp, working, tmp_path / "rendered")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scoring glr2020_1st, 2 model(s)" in proc.stdout
    sub_path = working / "submission.csv"
    ids = pd.read_csv(comp / "sample_submission.csv", dtype=str)["id"].tolist()
    sub = read_submission(sub_path)
    validate_submission(sub, ids, source=sub_path)
    assert set(sub.loc[sub["landmark_id"] >= 0, "landmark_id"]) <= set(lids[:4])
    report = json.loads((working / "submission.predict.json").read_text())
    assert report["inference"] == {**report["inference"], **settings} and report["index_rows_duplicate"] > 0
    result = score_json(world["root"] / "solution.csv", sub_path)
    keep = pd.read_csv(world["root"] / "train.csv")
    keep[keep["landmark_id"].isin(lids[:4])].to_csv(tmp_path / "kept.csv", index=False)
    assert result["n_images"] == len(ids) and report["no_prediction"] == 0
    assert result["gap"] > chance_bar(world["root"] / "solution.csv", tmp_path / "kept.csv")
