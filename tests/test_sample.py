"""The embedded sample dataset: GLDv2 layout, determinism, long tail, noise bookkeeping, realistic views."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from landmark_kaggle.data import gld
from landmark_kaggle.data.sample import make_sample
from landmark_kaggle.errors import UserError


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    return root, make_sample(root, seed=3)


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_is_gldv2(sample):
    root, info = sample
    train = gld.load_train_index(root)
    test = gld.load_test_index(root)
    assert len(train) == info["train_images"] and len(test) == info["test_images"]
    assert gld.find_missing(train) == [] and gld.find_missing(test) == []
    assert not set(train.frame["id"]) & set(test.frame["id"])
    image = cv2.imread(train.frame["path"][0])
    assert image is not None and image.ndim == 3 and 160 <= max(image.shape[:2]) <= 224


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_sample(tmp_path / "a", seed=5, num_classes=3, max_per_class=5, test_per_class=1, nonlandmark_test=2)
    make_sample(tmp_path / "b", seed=5, num_classes=3, max_per_class=5, test_per_class=1, nonlandmark_test=2)
    make_sample(tmp_path / "c", seed=6, num_classes=3, max_per_class=5, test_per_class=1, nonlandmark_test=2)
    assert a["train_images"] >= 3 * 3
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_long_tail_covers_every_table_2_bucket(sample):
    root, _ = sample
    counts = gld.load_train_index(root).label_map["count"].to_numpy()
    assert all(n > 0 for n in gld.class_buckets(counts).values())


def test_noise_is_recorded_and_mislabelled(sample):
    root, info = sample
    noise = pd.read_csv(root / "noise.csv", dtype={"id": str})
    train = pd.read_csv(root / "train.csv", dtype={"id": str}).set_index("id")
    assert len(noise) == info["noise_images"] > 0
    assert set(noise["kind"]) <= {"other-landmark", "non-landmark"}
    # Each noise image carries the label it was given, and its true source is not that landmark's photo.
    assert (train.loc[noise["id"], "landmark_id"].to_numpy() == noise["landmark_id"].to_numpy()).all()
    sources = {int(k): v.rsplit(".", 1)[0] for k, v in info["sources"].items()}
    assert all(sources[lid] != src for lid, src in zip(noise["landmark_id"], noise["true_source"], strict=True))


def test_solution_scores_like_the_competition(sample):
    root, info = sample
    sol = pd.read_csv(root / "solution.csv", dtype=str, keep_default_na=False)
    assert list(sol.columns) == ["id", "landmarks", "Usage"]
    assert set(sol["Usage"]) == {"Public", "Private"}
    assert (sol["landmarks"] == "").sum() == info["nonlandmark_test_images"]
    assert set(sol.loc[sol["landmarks"] != "", "landmarks"].astype(int)) == {int(k) for k in info["sources"]}
    sub = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert sorted(sub["id"]) == sorted(sol["id"])
    assert json.loads((root / "sample.json").read_text())["seed"] == 3


def _hist(path):
    hsv = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2HSV)
    h = cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256])
    return cv2.normalize(h, h).flatten()


def test_views_of_one_landmark_resemble_each_other_more_than_others(sample):
    root, _ = sample
    index = gld.load_train_index(root)
    noise = set(pd.read_csv(root / "noise.csv", dtype={"id": str})["id"])
    frame = index.frame[~index.frame["id"].isin(noise)]
    big = frame.groupby("label").filter(lambda g: len(g) >= 6).groupby("label").head(6)
    hists = {row.id: _hist(row.path) for row in big.itertuples()}
    same, other = [], []
    rows = list(big.itertuples())
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            sim = cv2.compareHist(hists[a.id], hists[b.id], cv2.HISTCMP_CORREL)
            (same if a.label == b.label else other).append(sim)
    assert np.mean(same) > np.mean(other) + 0.2
    # ...yet no two views are the same picture.
    digests = {hashlib.sha256(Path(p).read_bytes()).digest() for p in big["path"]}
    assert len(digests) == len(set(big["path"]))


def test_rerun_is_a_no_op_but_other_settings_are_refused(sample, tmp_path):
    root, info = sample
    before = tree_digest(root)
    assert make_sample(root, seed=3) == info
    assert tree_digest(root) == before
    with pytest.raises(UserError, match="already holds a different dataset"):
        make_sample(root, seed=4)
    with pytest.raises(UserError, match="--classes"):
        make_sample(tmp_path / "x", num_classes=99)
