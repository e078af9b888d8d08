"""Kaggle inputs found by what they hold (``paths.find_inputs``) in every layout, and ``predict --kaggle``'s rules.

The trees are made of the marker files each kind is recognised by; the
submission kernel runs on real trees in ``test_kaggle_image.py`` and the
launchers in ``test_kernels.py``.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
from helpers import LAYOUTS, input_path

from landmark_kaggle import paths
from landmark_kaggle.data import embstore
from landmark_kaggle.errors import UserError
from landmark_kaggle.infer import predict, retrieval
from landmark_kaggle.infer.kaggle_inputs import kaggle_inputs
from landmark_kaggle.kaggle import kernels
from landmark_kaggle.model.network import MODEL_FOLDER_FILES, WEIGHTS_FILE
from landmark_kaggle.train import loop
from tfrec_builder import clean

REPO = Path(__file__).resolve().parents[1]


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _model(folder: Path) -> Path:
    for name in MODEL_FOLDER_FILES:
        _touch(folder / name)
    return folder


def _tree(root: Path, layout: str) -> dict:
    """One of everything, each where ``layout`` mounts it."""
    at = {kind: input_path(root, layout, src, slug) for kind, src, slug in [
        ("competition", "competition", paths.COMPETITION), ("wheel", "dataset", "landmark-kaggle-wheel"),
        ("model", "model", "landmark-kaggle-model"), ("index", "dataset", "landmark-kaggle-index"),
        ("distractors", "dataset", "landmark-kaggle-distractors"), ("shards", "dataset", "landmark-kaggle-tfrec"),
        ("weights", "dataset", "efficientnetv2-weights"), ("train_output", "notebook", "landmark-kaggle-train"),
        ("build_embed", "notebook", "landmark-kaggle-build-embed")]}
    comp = at["competition"]
    _touch(comp / "sample_submission.csv", "id,landmarks\n")
    _touch(comp / "train.csv", "id,landmark_id\n")
    _touch(comp / "test" / "0" / "1" / "2" / "0123456789abcdef.jpg")
    # A wheel inside an image tree is never looked at (GLDv2's a/b/c levels under train/, test/, index/).
    _touch(comp / "train" / "a" / "b" / "c" / "landmark_kaggle-9.9-py3-none-any.whl")
    wheel = _touch(at["wheel"] / "landmark_kaggle-0.1.0-py3-none-any.whl")
    _model(at["model"])
    _touch(at["index"] / "index.json", json.dumps({"rows": 10, "landmarks": 4}))
    _touch(at["distractors"] / "index.json", json.dumps({"rows": 6, "landmarks": 0}))
    # A build-write kernel's output holds its part two levels down: notebooks/alice/<slug>/tfrec/<part>/.
    write_out = input_path(root, layout, "notebook", "landmark-kaggle-build-write-part-2")
    parts = [at["shards"] / "part-000", at["shards"] / "part-001", write_out / "tfrec" / "part-002"]
    for part in parts:
        _touch(part / "label_map.csv")
        _touch(part / "train-00000-of-00001.tfrec")
    weights = _touch(at["weights"] / "efficientnetv2-s_notop.h5")
    out = at["train_output"]
    _touch(out / "model" / "checkpoint" / "state.json", "{}")
    _model(out / "model")
    _touch(out / "model" / "checkpoint" / "state-000000004.weights.h5")  # a checkpoint, not backbone weights
    # The build-embed kernel's output: its store and the clean beside it.
    store, clean = at["build_embed"] / "embeddings", at["build_embed"] / "clean"
    for name in paths.STORE_MARKERS:
        _touch(store / name)
    _touch(store / "chunks" / "00000.json")
    for name in (*paths.CLEAN_MARKERS, "classes.csv"):
        _touch(clean / name)
    return {"embeddings": [store], "clean": [clean],
            "competition": [comp], "wheel": [wheel], "model": [at["model"], out / "model"], "index": [at["index"]],
            "distractors": [at["distractors"]], "shards": parts, "weights": [weights],
            "train_output": [out / "model"]}


def test_the_deepest_layout_is_within_reach():
    """A Kaggle Model of today sits six levels down; the walk reaches two levels of its own below that."""
    assert len(input_path(Path(), "owner-models", "model", "m").parts) == 6
    assert paths.MAX_DEPTH >= 8


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_kind_is_found_by_content_in_every_layout(tmp_path, layout):
    expected = _tree(tmp_path, layout)
    found = paths.find_inputs(tmp_path)
    assert dict(found) == {kind: sorted(expected.get(kind, [])) for kind in paths.KINDS}
    assert found.one("competition") == expected["competition"][0]
    assert found.every("shards") == sorted(expected["shards"])
    # The kernels' prelude finds the wheel before the package is installed, by the same rules.
    spec = importlib.util.spec_from_file_location("prelude", REPO / "kernels" / "prelude.py")
    prelude = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prelude)
    assert prelude.find_wheels(tmp_path) == found["wheel"]
    assert (prelude.MAX_DEPTH, prelude.IMAGE_SPLITS) == (paths.MAX_DEPTH, paths.IMAGE_SPLITS)


def test_the_markers_are_the_ones_the_writers_use():
    assert set(paths.MODEL_MARKERS) == set(MODEL_FOLDER_FILES) == set(kernels.MODEL_FILES)
    assert WEIGHTS_FILE in paths.MODEL_MARKERS
    assert paths.INDEX_MARKER == retrieval.INDEX_META
    assert paths.CHECKPOINT_MARKER == (loop.CHECKPOINT_DIR, loop.STATE_FILE)
    assert paths.STORE_MARKERS == (embstore.META, embstore.IDS, embstore.MATRIX)
    assert paths.CLEAN_MARKERS == (clean.OUTLIERS_CSV, clean.REPORT_JSON)


def test_two_candidates_none_and_too_deep_are_clear(tmp_path):
    a = _model(tmp_path / "datasets" / "alice" / "model-a")
    b = _model(tmp_path / "model-b" / "keras" / "s" / "2")  # one-character variation and version
    # Depth 9: one below the deepest an input can sit (a Kaggle Model's version folder and two of its own).
    _model(tmp_path / "models" / "o" / "m" / "keras" / "v" / "1" / "x" / "y" / "nine")
    _touch(tmp_path / "other" / "index.json", json.dumps({"name": "not ours"}))
    found = paths.find_inputs(tmp_path)
    assert found["model"] == [a, b] and found["index"] == found["distractors"] == []
    with pytest.raises(UserError, match="found 2 candidates for a model folder") as err:
        found.one("model")
    assert str(a) in str(err.value) and str(b) in str(err.value)
    assert found.optional("index") is None
    with pytest.raises(UserError, match=rf"found no the competition data .* under {tmp_path}"):
        found.one("competition")
    with pytest.raises(UserError, match="found no TFRecord shards"):
        found.every("shards")
    assert paths.find_inputs(tmp_path / "nope") == {kind: [] for kind in paths.KINDS}
    # Depth 8 is found: the deepest a Kaggle Model of today (six levels) plus two of its own goes.
    c = _model(tmp_path / "models" / "o" / "m" / "keras" / "v" / "1" / "x" / "eight")
    assert paths.find_inputs(tmp_path)["model"] == [a, b, c]


def test_links_lead_to_one_candidate_and_loops_end(tmp_path):
    model = _model(tmp_path / "datasets" / "alice" / "m")
    wheel = _touch(tmp_path / "datasets" / "alice" / "w" / "landmark_kaggle-0.1.0-py3-none-any.whl")
    (model / "loop").symlink_to(tmp_path / "datasets")
    # One source mounted under two names (classic beside new): the same input, not two.
    (tmp_path / "m").symlink_to(model)
    (tmp_path / "w").symlink_to(wheel.parent)
    found = paths.find_inputs(tmp_path)
    assert found["model"] == [model] and found["wheel"] == [wheel]
    spec = importlib.util.spec_from_file_location("prelude", REPO / "kernels" / "prelude.py")
    prelude = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prelude)
    assert prelude.find_wheels(tmp_path) == [wheel]


def _args(**given) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    argv = ["--kaggle"]
    for key, value in given.items():
        argv += [f"--{key}", str(value)]
    return parser.parse_args(argv)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_submission_kernel_finds_the_model_in_every_layout(tmp_path, monkeypatch, layout):
    """What the submission kernel runs (`predict --kaggle`) with a Kaggle Model attached in each layout, e.g.
    /kaggle/input/models/alice/landmark-kaggle-model/keras/default/1/."""
    inp = tmp_path / "input"
    model = _model(input_path(inp, layout, "model", "landmark-kaggle-model"))
    comp = input_path(inp, layout, "competition", paths.COMPETITION)
    _touch(comp / "sample_submission.csv", "id,landmarks\n")
    _touch(comp / "test" / "0" / "1" / "2" / "0123456789abcdef.jpg")
    monkeypatch.setenv(paths.KAGGLE_INPUT_ENV, str(inp))
    monkeypatch.setenv(paths.KAGGLE_WORKING_ENV, str(tmp_path / "working"))
    args = _args()
    kaggle_inputs(args)
    assert args.model == [model] and args.images == comp / "test"
    if layout == "owner-models":
        assert model.relative_to(inp).parts[:3] == ("models", "alice", "landmark-kaggle-model")


def test_predict_kaggle_fills_only_what_the_command_line_left_out(tmp_path, monkeypatch):
    expected = _tree(tmp_path / "input", "new")
    monkeypatch.setenv(paths.KAGGLE_INPUT_ENV, str(tmp_path / "input"))
    monkeypatch.setenv(paths.KAGGLE_WORKING_ENV, str(tmp_path / "working"))
    # Two model folders are attached (the model and the training output): not a question when --model is given.
    args = _args(model=tmp_path / "mine", out=tmp_path / "mine.csv", index=tmp_path / "my-index")
    kaggle_inputs(args)
    comp = expected["competition"][0]
    assert (args.model, Path(args.out), Path(args.index)) == ([str(tmp_path / "mine")], tmp_path / "mine.csv",
                                                                tmp_path / "my-index")
    assert (args.distractors, args.images, args.ids) == (expected["distractors"][0], comp / "test",
                                                         comp / "sample_submission.csv")
    # Images named by hand never get the competition's id list.
    args = _args(model=tmp_path / "mine", images=tmp_path / "imgs")
    kaggle_inputs(args)
    assert (args.images, args.ids, args.out) == (str(tmp_path / "imgs"), None,
                                                 tmp_path / "working" / "submission.csv")
    # Left to find them: the model dataset and the training output hold the same weights, so one model ...
    args = _args(images=tmp_path / "imgs")
    kaggle_inputs(args)
    assert args.model == [expected["model"][0]]
    # ... and two different models are a two-model ensemble, in path order.
    (expected["model"][1] / WEIGHTS_FILE).write_bytes(b"other weights")
    args = _args(images=tmp_path / "imgs")
    kaggle_inputs(args)
    assert args.model == sorted(expected["model"])
