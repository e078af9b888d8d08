"""subset: a real GLDv2-layout folder cut to N classes, with held-out images and distractors scored by solution.csv."""

import pandas as pd
import pytest

from landmark_kaggle.data import gld
from landmark_kaggle.data.sample import make_sample
from landmark_kaggle.data.subset import make_subset
from landmark_kaggle.errors import UserError


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    make_sample(root, seed=1, num_classes=8, max_per_class=20, min_per_class=4, image_size=(32, 48))
    return root


def test_subset_layout_and_solution(full, tmp_path):
    summary = make_subset(full, tmp_path / "sub", classes=3, max_per_class=5, test=6, distractors=4, seed=2)
    sub = gld.load_train_index(tmp_path / "sub")
    source = gld.load_train_index(full).frame.set_index("id")
    assert sub.num_classes == 3 and (sub.label_map["count"] <= 5).all()
    assert gld.find_missing(sub) == []
    assert (source.loc[sub.frame["id"], "landmark_id"].to_numpy() == sub.frame["landmark_id"].to_numpy()).all()

    sol = pd.read_csv(tmp_path / "sub" / "solution.csv", dtype=str, keep_default_na=False)
    assert len(sol) == 10 and summary["test_landmark_images"] == 6 and summary["test_distractors"] == 4
    assert not set(sol["id"]) & set(sub.frame["id"])
    kept = set(sub.label_map["landmark_id"])
    held = sol[sol["landmarks"] != ""]
    # Held-out images keep their true landmark; distractors come from classes outside the subset.
    assert (held["landmarks"].astype(int).to_numpy() == source.loc[held["id"], "landmark_id"].to_numpy()).all()
    assert set(held["landmarks"].astype(int)) == kept  # round-robin: every class is asked about
    distractor_classes = set(source.loc[sol.loc[sol["landmarks"] == "", "id"], "landmark_id"])
    assert len(distractor_classes) > 0 and not distractor_classes & kept
    assert gld.find_missing(gld.load_test_index(tmp_path / "sub")) == []
    assert set(sol["Usage"]) == {"Public", "Private"}


def test_same_seed_same_subset(full, tmp_path):
    make_subset(full, tmp_path / "a", classes=2, max_per_class=3, seed=7)
    make_subset(full, tmp_path / "b", classes=2, max_per_class=3, seed=7)
    for name in ("train.csv", "solution.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_impossible_requests_are_refused(full, tmp_path):
    with pytest.raises(UserError, match="classes have >="):
        make_subset(full, tmp_path / "x", classes=50, max_per_class=3)
    with pytest.raises(UserError, match="--distractors"):
        make_subset(full, tmp_path / "y", classes=2, max_per_class=3, distractors=10_000)
