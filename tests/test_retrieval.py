"""Retrieval: blocked top-k search, per-landmark voting, blending, non-landmark suppression, the index files."""

import json

import numpy as np
import pytest

from landmark_kaggle import retrieval
from landmark_kaggle.embed_index import build_index
from landmark_kaggle.embstore import StoreError


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_rows", [7, 64, 100000])
def test_blocked_search_equals_brute_force(block_rows):
    rng = np.random.default_rng(0)
    index, queries = _unit(rng, 300, 16), _unit(rng, 11, 16)
    sims, rows = retrieval.search(queries, index, k=5, block_rows=block_rows)
    full = queries @ index.T
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), rtol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_search_with_k_larger_than_the_index():
    rng = np.random.default_rng(1)
    sims, rows = retrieval.search(_unit(rng, 2, 4), _unit(rng, 3, 4), k=10)
    assert sims.shape == rows.shape == (2, 3)
    assert sorted(rows[0].tolist()) == [0, 1, 2]


def test_vote_by_hand():
    # Query 0's neighbours: rows 4 (label 2), 1 (label 2), 0 (label 0), k = 3.
    sims = np.array([[0.9, 0.5, 0.3], [0.8, 0.2, 0.1]], np.float32)
    rows = np.array([[4, 1, 0], [3, 2, 0]])
    labels = np.array([0, 2, -1, 1, 2])  # row 2 is a non-landmark: it votes for nothing
    got = retrieval.vote(sims, rows, labels, num_classes=3)
    np.testing.assert_allclose(got[0], [0.3 / 3, 0.0, (0.9 + 0.5) / 3], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0.1 / 3, 0.8 / 3, 0.0], rtol=1e-6)


def test_combine_and_penalty_by_hand():
    cos = np.array([[0.2, 0.6]], np.float32)
    votes = np.array([[0.9, 0.0]], np.float32)
    np.testing.assert_allclose(retrieval.combine(cos, votes, 0.0), cos)
    np.testing.assert_allclose(retrieval.combine(cos, votes, 1.0), votes)
    np.testing.assert_allclose(retrieval.combine(cos, votes, 0.25), [[0.75 * 0.2 + 0.25 * 0.9, 0.75 * 0.6]])
    distractors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    queries = np.array([[1.0, 0.0], [-0.6, -0.8]], np.float32)
    # Query 0: top-2 sims 1.0 and 0.0 → mean 0.5; query 1: 0.6 and -0.6 → mean 0 → no penalty.
    np.testing.assert_allclose(retrieval.nonlandmark_penalty(queries, distractors, 2, 2.0), [1.0, 0.0], atol=1e-6)
    # Only the part above the query's closeness to landmarks counts: 2·(0.5 - 0.2) and 2·(0 - (-1)).
    got = retrieval.nonlandmark_penalty(queries, distractors, 2, 2.0, np.array([0.2, -1.0]))
    np.testing.assert_allclose(got, [0.6, 2.0], atol=1e-6)


@pytest.mark.slow
def test_index_holds_every_training_image_with_unit_rows(world):
    import pandas as pd

    index = retrieval.RetrievalIndex(world["index"])
    train = pd.read_csv(world["root"] / "train.csv", dtype={"id": str})
    assert sorted(index.ids.tolist()) == sorted(train["id"].tolist())
    lids = dict(zip(train["id"], train["landmark_id"], strict=True))
    assert [lids[i] for i in index.ids] == index.landmark_ids.tolist()
    np.testing.assert_allclose(np.linalg.norm(index.matrix.astype(np.float32), axis=1), 1.0, atol=2e-3)
    meta = json.loads((world["index"] / "index.json").read_text())
    assert meta["rows"] == len(train) and meta["failed"] == 0
    distractors = retrieval.RetrievalIndex(world["distractors"])
    assert (distractors.landmark_ids == -1).all() and len(distractors) == 24


@pytest.mark.slow
def test_interrupted_index_resumes_to_the_same_rows(world, tmp_path):
    out = tmp_path / "index"
    build_index(world["model"], out, data=str(world["tfrec"]), chunk_size=16)
    first = np.load(out / "matrix.npy").copy()
    # A kill mid-chunk: the chunk's rows are garbage and its marker was never written.
    (out / "chunks" / "00001.json").unlink()
    mm = np.load(out / "matrix.npy", mmap_mode="r+")
    mm[16:32] = 0
    mm.flush()
    del mm
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(StoreError, match="incomplete"):
        retrieval.RetrievalIndex(out)
    build_index(world["model"], out, data=str(world["tfrec"]), chunk_size=16)
    np.testing.assert_array_equal(np.load(out / "matrix.npy"), first)


@pytest.mark.slow
def test_an_index_from_another_model_is_refused(world, tmp_path):
    import shutil

    other = tmp_path / "index"
    shutil.copytree(world["index"], other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    np.save(other / "probe.npy", -np.load(other / "probe.npy"))
    from landmark_kaggle.predict import predict

    with pytest.raises(StoreError, match="probe embedding differs"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", index=other)
    assert not (tmp_path / "s.csv").exists()
