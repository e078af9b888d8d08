"""Retrieval: blocked top-k search, per-landmark voting, blending, non-landmark suppression, the index files."""

import json
import os

import numpy as np
import pytest

from landmark_kaggle.data.embstore import StoreError
from landmark_kaggle.errors import UserError
from landmark_kaggle.infer import retrieval, search
from landmark_kaggle.infer.embed_index import build_index


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_rows,query_block", [(7, None), (64, 3), (100000, 1), (2, 4)])
def test_blocked_search_equals_brute_force(block_rows, query_block):
    rng = np.random.default_rng(0)
    index, queries = _unit(rng, 300, 16), _unit(rng, 11, 16)
    sims, rows = search.search(queries, index, k=5, block_rows=block_rows, query_block=query_block)
    full = queries @ index.astype(np.float16).astype(np.float32).T  # the index is held as float16
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), rtol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_a_device_index_answers_many_searches_from_one_placement():
    rng = np.random.default_rng(3)
    rows = _unit(rng, 500, 8)
    index = search.DeviceIndex(rows, row_block=128)
    assert index.rows.dtype.name == "float16" and len(index) == 500 and index.dim == 8
    assert index.device.endswith("CPU:0")  # no GPU in CI; with one, the rows would live there
    for seed in range(3):
        q = _unit(np.random.default_rng(seed), 40, 8)
        want = search.search(q, rows, k=4, block_rows=500)
        got = index.search(q, 4, budget=4 * 128 * 7)  # a budget of 7 queries per block: 6 sub-blocks
        np.testing.assert_array_equal(got[1], want[1])
    assert index.query_block(40, budget=4 * 128 * 7) == 7
    np.testing.assert_allclose(search.mean_top_similarity(q, index, 4), want[0].mean(axis=1), rtol=1e-6)


def test_search_with_k_larger_than_the_index():
    rng = np.random.default_rng(1)
    sims, rows = search.search(_unit(rng, 2, 4), _unit(rng, 3, 4), k=10)
    assert sims.shape == rows.shape == (2, 3)
    assert sorted(rows[0].tolist()) == [0, 1, 2]


def test_queries_of_another_width_are_refused():
    with pytest.raises(ValueError, match="8 dims"):
        search.DeviceIndex(np.ones((3, 8), np.float32)).search(np.ones((2, 4), np.float32), 2)


def test_labels_for_landmark_ids():
    import pandas as pd

    lm = pd.DataFrame({"label": [0, 1, 2], "landmark_id": [5, 9, 40], "count": [1, 1, 1]})
    labels, unknown = retrieval.labels_for(np.array([40, 7, 5, -1, 9]), lm)
    assert labels.tolist() == [2, -1, 0, -1, 1] and unknown == 1  # 7 is unknown; -1 is a non-landmark


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
    # The finished chunks' markers dated to 2001: a chunk that is embedded again gets a new one, dated now.
    finished = sorted((out / "chunks").glob("*.json"))
    assert len(finished) == -(-len(first) // 16) - 1 >= 2  # 42 rows: chunks 0 and 2 finished, 1 to redo
    for marker in finished:
        os.utime(marker, ns=(10**18, 10**18))
    build_index(world["model"], out, data=str(world["tfrec"]), chunk_size=16)
    np.testing.assert_array_equal(np.load(out / "matrix.npy"), first)
    redone = [m.name for m in sorted((out / "chunks").glob("*.json")) if m.stat().st_mtime_ns != 10**18]
    assert redone == ["00001.json"]  # only the chunk the kill interrupted was embedded again


@pytest.mark.slow
def test_an_index_from_another_model_is_refused(world, tmp_path):
    import shutil

    other = tmp_path / "index"
    shutil.copytree(world["index"], other)
    meta = json.loads((other / "meta.json").read_text())
    members = [{**m, "weights_sha256": "0" * 64} for m in meta["members"]]
    (other / "meta.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64, "members": members}))
    info = json.loads((other / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**info, "weights_sha256": "0" * 64, "members": members}))
    np.save(other / "probe.npy", -np.load(other / "probe.npy"))
    from landmark_kaggle.infer.predict import predict

    with pytest.raises(StoreError, match="probe embedding differs"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", index=other)
    assert not (tmp_path / "s.csv").exists()


def _index_folder(path, ids, rows, lids, b=None, nonlandmarks_sha=None):
    """A real index folder (store + landmark ids + index.json) from given unit rows, as embed-index writes one."""
    from landmark_kaggle.data.embstore import StoreWriter

    rows = np.asarray(rows, np.float32)
    writer = StoreWriter(path, np.array(ids), {"backend": "hand", "weights_sha256": "x", "image_size": 32},
                         dim=rows.shape[1], chunk_size=4)
    for k in range(writer.num_chunks):
        writer.write_chunk(k, rows[writer.chunk_rows(k)])
    writer.finalize()
    np.save(path / retrieval.LANDMARK_IDS, np.asarray(lids, np.int64))
    info = {"rows": len(ids)}
    if b is not None:
        np.save(path / retrieval.NONLANDMARK_SIM, np.asarray(b, np.float32))
        info["nonlandmarks"] = {"ids_sha256": nonlandmarks_sha}
    (path / retrieval.INDEX_META).write_text(json.dumps(info))
    return path


def _label_map(lids):
    import pandas as pd

    return pd.DataFrame({"label": np.arange(len(lids)), "landmark_id": lids, "count": 1})


E = np.eye(4, dtype=np.float32)


def test_assembly_dedupes_restricts_and_scores_by_hand(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    # Bundle: a → landmark 10 along e0, b → 20 along e1, c → 30 along e2. Competition: c again (30, along e2)
    # and d → 40 along e3. The competition's c replaces the bundle's; restricted to {30, 40} only c and d remain.
    lm = _label_map([10, 20, 30, 40])
    bundle = retrieval.RetrievalIndex(_index_folder(tmp_path / "bundle", ["a" * 16, "b" * 16, "c" * 16],
                                                    E[:3], [10, 20, 30]), lm)
    comp = retrieval.RetrievalIndex(_index_folder(tmp_path / "comp", ["c" * 16, "d" * 16], E[2:], [30, 40]), lm)
    inf = InferenceConfig(topk_neighbours=1, retrieval_weight=1.0)
    r = retrieval.Retrieval(lm, inf, 30.0, [bundle, comp])
    assert r.counts["index_rows"] == 4 and r.counts["index_rows_duplicate"] == 1
    r = retrieval.Retrieval(lm, inf, 30.0, [bundle, comp], allowed=np.array([30, 40]))
    assert r.counts["index_rows"] == 2 and r.counts["index_rows_restricted"] == 2
    # A query along e0 (landmark 10's only image) can no longer find it: its nearest allowed rows are at
    # similarity 0. With w = 1 and one neighbour, the vote is 0 for c or d; the classifier's cos θ, masked to
    # the allowed classes, is never 10 or 20 either.
    cos = np.array([[0.9, 0.8, 0.1, 0.2]], np.float32)
    label, _ = r.score(cos, E[:1])
    assert label.tolist()[0] in (2, 3)
    # A query along e3 finds d (landmark 40, label 3) with similarity 1: the answer, with confidence w·1/1 = 1.
    label, conf = r.score(cos, E[3:4])
    assert label.tolist() == [3]
    np.testing.assert_allclose(conf, [1.0], atol=1e-3)


def test_glr2020_1st_needs_b_from_the_same_nonlandmarks(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    lm = _label_map([10, 20])
    dis_dir = _index_folder(tmp_path / "dis", ["e" * 16, "f" * 16], [E[0], -E[0]], [-1, -1])
    dis = retrieval.RetrievalIndex(dis_dir)
    inf = InferenceConfig(scoring="glr2020_1st", topk_neighbours=2)
    plain = retrieval.RetrievalIndex(_index_folder(tmp_path / "plain", ["a" * 16, "b" * 16], E[:2], [10, 20]), lm)
    with pytest.raises(UserError, match="nonlandmark_sim.npy.*--nonlandmarks"):
        retrieval.Retrieval(lm, inf, 30.0, [plain], dis)
    other = retrieval.RetrievalIndex(_index_folder(tmp_path / "other", ["a" * 16, "b" * 16], E[:2], [10, 20],
                                                   b=[0.1, 0.2], nonlandmarks_sha="0" * 64), lm)
    with pytest.raises(UserError, match="other non-landmarks"):
        retrieval.Retrieval(lm, inf, 30.0, [other], dis)
    with pytest.raises(UserError, match="needs the non-landmark index"):
        retrieval.Retrieval(lm, inf, 30.0, [other])
    # The run's own rows (the competition's) get B computed here: row a (e0) has distractor sims 1 and -1, mean
    # top-5 (of 2) = 0; row b (e1) has 0 and 0 → 0.
    r = retrieval.Retrieval(lm, inf, 30.0, [plain], dis, own_b=(plain,))
    np.testing.assert_allclose(r.b, [0.0, 0.0], atol=1e-6)
    # Query e1: neighbours b (s = 1, B 0) and a (s = 0, B 0); C = mean top-10 of (0, 0) = 0 → landmark 20, 1.0.
    label, conf = r.score(np.zeros((1, 2), np.float32), E[1:2])
    assert label.tolist() == [1]
    np.testing.assert_allclose(conf, [1.0], atol=1e-3)


def test_rules_without_what_they_need_are_clear_errors(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    lm = _label_map([10])
    for rule in ("glr2020_1st", "glr2020_3rd"):
        with pytest.raises(UserError, match=f"scoring={rule} needs a retrieval index"):
            retrieval.Retrieval(lm, InferenceConfig(scoring=rule), 30.0, [])
    with pytest.raises(UserError, match="none of the 2 landmarks"):
        retrieval.Retrieval(lm, InferenceConfig(), 30.0, [], allowed=np.array([3, 4]))
