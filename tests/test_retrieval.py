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
    r = retrieval.Retrieval(lm, inf, [bundle, comp])
    assert r.counts["index_rows"] == 4 and r.counts["index_rows_duplicate"] == 1
    r = retrieval.Retrieval(lm, inf, [bundle, comp], allowed=np.array([30, 40]))
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
        retrieval.Retrieval(lm, inf, [plain], dis)
    other = retrieval.RetrievalIndex(_index_folder(tmp_path / "other", ["a" * 16, "b" * 16], E[:2], [10, 20],
                                                   b=[0.1, 0.2], nonlandmarks_sha="0" * 64), lm)
    with pytest.raises(UserError, match="other non-landmarks"):
        retrieval.Retrieval(lm, inf, [other], dis)
    with pytest.raises(UserError, match="needs the non-landmark index"):
        retrieval.Retrieval(lm, inf, [other])
    # The run's own rows (the competition's) get B computed here: row a (e0) has distractor sims 1 and -1, mean
    # top-5 (of 2) = 0; row b (e1) has 0 and 0 → 0.
    r = retrieval.Retrieval(lm, inf, [plain], dis, own_b=(plain,))
    np.testing.assert_allclose(r.b, [0.0, 0.0], atol=1e-6)
    # Query e1: neighbours b (s = 1, B 0) and a (s = 0, B 0); C = mean top-10 of (0, 0) = 0 → landmark 20, 1.0.
    label, conf = r.score(np.zeros((1, 2), np.float32), E[1:2])
    assert label.tolist() == [1]
    np.testing.assert_allclose(conf, [1.0], atol=1e-3)


def test_the_default_rule_runs_with_a_model_alone():
    # The default inference.scoring must answer with nothing but a model: no index, no non-landmark gallery
    # (benchmarks/RESULTS.md "Quality on real photos": glr2020_1st led there but cannot run without them).
    from landmark_kaggle.config import InferenceConfig

    r = retrieval.Retrieval(_label_map([10, 20, 30]), InferenceConfig(), [])
    cos = np.array([[0.1, 0.7, 0.2], [0.9, 0.0, 0.3]], np.float32)
    label, conf = r.score(cos.copy(), np.zeros((2, 4), np.float32))
    assert label.tolist() == [1, 0]  # the classifier's top class
    np.testing.assert_allclose(conf, [0.7, 0.9], rtol=1e-6)


def test_rules_without_what_they_need_are_clear_errors(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    lm = _label_map([10])
    for rule in ("glr2020_1st", "glr2020_3rd"):
        with pytest.raises(UserError, match=f"scoring={rule} needs a retrieval index"):
            retrieval.Retrieval(lm, InferenceConfig(scoring=rule), [])
    with pytest.raises(UserError, match="none of the 2 landmarks"):
        retrieval.Retrieval(lm, InferenceConfig(), [], allowed=np.array([3, 4]))


@pytest.mark.parametrize("row_block", [3, 1000])
def test_a_penalty_is_subtracted_before_the_top_k(row_block):
    # Every row's similarity becomes clamp(s, 0, 1) - B[row] before the top-k, in each block: brute force agrees.
    rng = np.random.default_rng(7)
    rows, queries = _unit(rng, 40, 6), _unit(rng, 9, 6)
    b = rng.uniform(0.0, 0.5, 40).astype(np.float32)
    b[5] = np.inf  # kept out of every answer
    sims, got = search.DeviceIndex(rows, row_block=row_block, penalty=b).search(queries, 4)
    full = np.clip(queries @ rows.astype(np.float16).astype(np.float32).T, 0, 1) - b
    want = np.argsort(-full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), rtol=1e-6)
    assert 5 not in got
    with pytest.raises(ValueError, match="penalty of shape"):
        search.DeviceIndex(rows, penalty=b[:3])


def _first_place_world(tmp_path, label_map_lids):
    """Four index rows and two non-landmarks (unit vectors in 3-d) with B stored as embed-index writes it.

    r0 = e0 (landmark 10, B 0.6), r1 = (0.96, 0.28, 0) (10, B 0.5), r2 = (0.8, 0.6, 0) (20, B 0),
    r3 = (0.6, 0.8, 0) (20, B 0.05); non-landmarks (0.6, 0, 0.8) and e2.
    """
    rows = np.array([[1, 0, 0], [0.96, 0.28, 0], [0.8, 0.6, 0], [0.6, 0.8, 0]], np.float32)
    dis_dir = _index_folder(tmp_path / "dis", ["e" * 16, "f" * 16], [[0.6, 0, 0.8], [0, 0, 1]], [-1, -1])
    dis = retrieval.RetrievalIndex(dis_dir)
    lm = _label_map(label_map_lids)
    index = retrieval.RetrievalIndex(_index_folder(tmp_path / "index", [c * 16 for c in "abcd"], rows,
                                                   [10, 10, 20, 20], b=[0.6, 0.5, 0.0, 0.05],
                                                   nonlandmarks_sha=dis.meta["ids_sha256"]), lm)
    return lm, index, dis


def test_glr2020_1st_keeps_the_rows_b_brings_up(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    lm, index, dis = _first_place_world(tmp_path, [10, 20])
    r = retrieval.Retrieval(lm, InferenceConfig(scoring="glr2020_1st"), [index], dis)
    assert r.neighbours() == 3  # as published
    # Query e0. Raw similarities 1.0, 0.96, 0.8, 0.6: the raw top 3 are r0, r1, r2.
    # clamp(s, 0, 1) - B: 0.4, 0.46, 0.8, 0.55 → the top 3 are r2, r3, r1: B lets r3 in and pushes r0 out.
    #   landmark 20: 0.8 + 0.55 = 1.35; landmark 10: 0.46. C = mean(0.6, 0) = 0.3 → 20 with 1.35 - 0.3 = 1.05.
    # (B subtracted after a raw top 3 would give 10: 0.4 + 0.46 = 0.86 against 20: 0.8, the other answer.)
    label, conf = r.score(np.zeros((1, 2), np.float32), E[:1, :3])
    assert r.landmark_ids[label].tolist() == [20]
    np.testing.assert_allclose(conf, [1.05], atol=3e-3)


def test_landmarks_the_model_lacks_stay_for_the_rules_that_can_answer_them(tmp_path):
    from landmark_kaggle.config import InferenceConfig

    # The model knows landmark 10 only; 20 is in the index but has no class.
    lm, index, dis = _first_place_world(tmp_path, [10])
    r = retrieval.Retrieval(lm, InferenceConfig(scoring="glr2020_1st"), [index], dis)
    assert r.counts["index_rows"] == 4 and r.counts["index_rows_unknown"] == 2
    assert r.landmark_ids.tolist() == [10, 20]
    label, conf = r.score(np.zeros((1, 1), np.float32), E[:1, :3])
    assert label.tolist() == [1] and r.landmark_ids[label].tolist() == [20]
    np.testing.assert_allclose(conf, [1.05], atol=3e-3)
    # glr2020_3rd: 20 counts 1e-8 in place of a cos θ. Query e0, top 5 = all 4 rows: 10 gets 1⁹·0.5¹⁰ + 0.96⁹·0.5¹⁰.
    r = retrieval.Retrieval(lm, InferenceConfig(scoring="glr2020_3rd"), [index])
    label, conf = r.score(np.full((1, 1), 0.5, np.float32), E[:1, :3])
    assert r.landmark_ids[label].tolist() == [10]
    np.testing.assert_allclose(conf, [(1 + 0.96 ** 9) * 0.5 ** 10], rtol=2e-2)
    # A query along r3 (0.6, 0.8): landmark 20's rows are nearest (1.0 and 0.96), 10's at 0.8 and 0.6.
    #   20: (1 + 0.96⁹)·1e-80; 10: (0.8⁹ + 0.6⁹)·0.5¹⁰ → 10 still wins: 1e-8 is the published floor.
    label, conf = r.score(np.full((1, 1), 0.5, np.float32), np.array([[0.6, 0.8, 0]], np.float32))
    assert r.landmark_ids[label].tolist() == [10]
    np.testing.assert_allclose(conf, [(0.8 ** 9 + 0.6 ** 9) * 0.5 ** 10], rtol=2e-2)
    # linear scores cos θ: an unknown landmark's rows are left out, counted.
    r = retrieval.Retrieval(lm, InferenceConfig(topk_neighbours=4), [index])
    assert r.counts["index_rows"] == 2 and r.counts["index_rows_dropped"] == 2 and r.counts["index_rows_unknown"] == 2
    assert r.labels.tolist() == [0, 0] and r.landmark_ids.tolist() == [10]
