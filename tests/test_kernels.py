"""The submission kernel, run for real: a Kaggle-like input tree, the bundled wheel, a tiny trained model.

``kernels/submission.py`` is rendered as ``kernels push`` sends it (the shared
prelude pasted in) and executed as Kaggle would run it (cwd = the working
root), with the input and working roots moved under tmp by the environment
variables ``landmark_kaggle.paths`` reads. It must install the package from the
wheel dataset (not use this checkout) and leave a submission that ``score`` accepts.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import LAYOUTS, chance_bar, kaggle_input_tree, run_cli, run_kernel, score_json

from landmark_kaggle.kaggle import kernels
from landmark_kaggle.kaggle.build_kernels import WRITE_SLUG, WRITE_TITLE
from landmark_kaggle.paths import COMPETITION, KAGGLE_INPUT_ENV, KAGGLE_WORKING_ENV, find_inputs

SHARDS_DATASET = "landmark-kaggle-tfrec"
EMBED_OUTPUT = "landmark-kaggle-build-embed"

REPO = Path(__file__).resolve().parents[1]


def test_submission_metadata_is_the_offline_competition_kernel():
    meta = json.loads((REPO / "kernel-metadata.json").read_text())
    assert meta["code_file"] == "kernels/submission.py" and (REPO / meta["code_file"]).is_file()
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == [COMPETITION]
    assert {s.split("/")[1] for s in meta["dataset_sources"]} >= {kernels.WHEEL_DATASET, kernels.MODEL_DATASET}
    for name in ("train", "build-embed", "build-write"):
        sub = json.loads((REPO / kernels.KERNEL_TEMPLATES[name]).read_text())
        assert "enable_internet" in sub
        assert (REPO / kernels.KERNEL_TEMPLATES[name]).parent.joinpath(sub["code_file"]).is_file()
    train = json.loads((REPO / kernels.KERNEL_TEMPLATES["train"]).read_text())
    assert train["enable_tpu"] is True and train["machine_shape"] == "TpuV5E8"
    # The shards are named by each push (--shards, or the last push's with --continue), never a fixed dataset.
    assert [s.split("/")[1] for s in train["dataset_sources"]] == [kernels.WHEEL_DATASET]
    embed = json.loads((REPO / kernels.KERNEL_TEMPLATES["build-embed"]).read_text())
    assert embed["enable_gpu"] is True and embed["enable_internet"] is True
    # Every accelerator kernel names its machine: enable_gpu alone has given the default pool (kaggle-cli #821).
    assert meta["machine_shape"] == embed["machine_shape"] == "NvidiaTeslaT4"
    write = json.loads((REPO / kernels.KERNEL_TEMPLATES["build-write"]).read_text())
    assert write["enable_gpu"] is False and write["enable_internet"] is False
    # build-write's part 1 is what `push build-write --part k` rewrites; it reads build-embed's clean/.
    assert write["id"] == f"{kernels.PLACEHOLDER}/{WRITE_SLUG.format(k=1)}"
    assert write["title"] == WRITE_TITLE.format(k=1)
    assert write["kernel_sources"] == [embed["id"]]


def test_submission_kernel_runs_offline_from_the_wheel(world, tmp_path):
    inp, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    comp = inp / COMPETITION
    shutil.copytree(world["root"] / "test", comp / "test")
    shutil.copy2(world["root"] / "sample_submission.csv", comp / "sample_submission.csv")
    kernels.bundle(inp, "alice", model_dir=world["model"], index_dir=world["index"],
                   distractors_dir=world["distractors"])
    proc = run_kernel("submission", inp, working, tmp_path / "rendered")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The package came from the wheel, installed into the launcher's private folder.
    line = next(x for x in proc.stdout.splitlines() if x.startswith("predict --kaggle: package "))
    package = line.split("package ", 1)[1].split(",", 1)[0]
    assert "landmark_kaggle_" in package and not package.startswith(str(REPO))
    assert f"index {inp / kernels.INDEX_DATASET}," in line
    assert f"distractors {inp / kernels.DISTRACTOR_DATASET}" in line
    assert "retrieval on" in proc.stdout
    sub_path = working / "submission.csv"
    from landmark_kaggle.evaluate.submission import read_submission, validate_submission

    ids = pd.read_csv(comp / "sample_submission.csv", dtype=str)["id"].tolist()
    validate_submission(read_submission(sub_path), ids, source=sub_path)
    result = score_json(world["root"] / "solution.csv", sub_path)
    assert result["n_images"] == len(ids)
    assert result["gap"] > chance_bar(world["root"] / "solution.csv", world["root"] / "train.csv")
    assert json.loads((working / "submission.predict.json").read_text())["no_prediction"] == 0
    assert sorted(p.name for p in working.iterdir()) == ["submission.csv", "submission.predict.json"]


def _plan(name: str, inp: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run launcher NAME as Kaggle would, with LANDMARK_KAGGLE_PLAN=1: it installs the wheel, finds its
    inputs and prints the command it would run, without running it."""
    return run_kernel(name, inp, tmp_path / f"working-{name}", tmp_path / f"rendered-{name}", plan=True, timeout=300)


def _marker_sources(root: Path) -> dict:
    """A competition folder, a two-part shard dataset and build-embed's output, as far as finding them goes."""
    comp = root / "comp"
    (comp / "test" / "0" / "1" / "2").mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("id,landmarks\n")
    (comp / "train.csv").write_text("id,landmark_id\n")
    for part in ("part-000", "part-001"):
        (root / "tfrec" / part).mkdir(parents=True)
        (root / "tfrec" / part / "label_map.csv").write_text("label,landmark_id,count\n")
        (root / "tfrec" / part / "train-00000-of-00001.tfrec").write_bytes(b"")
    for name in ("outliers.csv", "report.json"):
        (root / "embed" / "clean").mkdir(parents=True, exist_ok=True)
        (root / "embed" / "clean" / name).write_text("")
    return {COMPETITION: ("competition", comp), SHARDS_DATASET: ("dataset", root / "tfrec"),
            EMBED_OUTPUT: ("notebook", root / "embed")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_and_build_launchers_find_their_inputs_in_every_layout(layout, wheel, tmp_path):
    inp = tmp_path / "input"
    placed = kaggle_input_tree(inp, layout, {**_marker_sources(tmp_path / "src"),
                                             kernels.WHEEL_DATASET: ("dataset", wheel.parent)})
    shards = placed[SHARDS_DATASET]
    proc = _plan("train", inp, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The train launcher hands the finding to `train --kaggle` (kaggletrain.py): every part, in every layout.
    assert "python -m landmark_kaggle.cli train --kaggle --set runtime.require_accelerator=true" in proc.stdout
    assert "runtime.strategy" not in proc.stdout  # the hardware found decides
    assert find_inputs(inp)["shards"] == [shards / "part-000", shards / "part-001"]
    proc = _plan("build-write", inp, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"python -m tfrec_builder.cli write {placed[COMPETITION]} --outliers "
            f"{placed[EMBED_OUTPUT] / 'clean' / 'outliers.csv'} --out tfrec --part 1 "
            "--dataset-id alice/gldv2-tfrec-512") in proc.stdout
    # The other two install the wheel from wherever the layout put it and hand the finding to the package.
    wheel_at = placed[kernels.WHEEL_DATASET]
    for name, command in (("build-embed", "python -m tfrec_builder.cli embed --kaggle"),
                          ("submission", "python -m landmark_kaggle.cli predict --kaggle")):
        proc = _plan(name, inp, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"installed {wheel.name} from {wheel_at}" in proc.stdout and command in proc.stdout


def test_launchers_stop_with_one_line_when_inputs_are_missing_or_doubled(wheel, tmp_path):
    inp = tmp_path / "input"
    sources = _marker_sources(tmp_path / "src")
    kaggle_input_tree(inp, "classic", {kernels.WHEEL_DATASET: ("dataset", wheel.parent)})
    working = tmp_path / "working-train"
    working.mkdir()
    env = {**os.environ, KAGGLE_INPUT_ENV: str(inp), KAGGLE_WORKING_ENV: str(working)}
    proc = run_cli("train", "--kaggle", env=env, cwd=working, timeout=300)
    assert proc.returncode == 2 and "no shard dataset under" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    kaggle_input_tree(inp, "classic", {COMPETITION: sources[COMPETITION]})
    proc = _plan("build-write", inp, tmp_path)
    assert proc.returncode == 1 and "landmark-kaggle: found no the output of `tfrec-builder clean`" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The competition attached in two layouts at once (an old and a new mount): which one is meant is unclear.
    kaggle_input_tree(inp, "new", {COMPETITION: sources[COMPETITION]})
    proc = _plan("build-write", inp, tmp_path)
    assert proc.returncode == 1 and "found 2 candidates for the competition data" in proc.stderr
    assert str(inp / COMPETITION) in proc.stderr and str(inp / "competitions" / COMPETITION) in proc.stderr
