"""The embeddings store: chunked writes, resume rules, memory-mapped reads, refusal of inconsistent folders."""

import json

import numpy as np
import pytest

from landmark_kaggle.data.embstore import StoreError, StoreWriter, check_probe, open_store

IDS = np.array([f"{i:016x}" for i in range(10)])
META = {"backend": "keras:Test", "weights_sha256": "none", "image_size": 32}


def _rows(k, n, dim=4):
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim) + 100 * k


def test_write_and_read_back(tmp_path):
    w = StoreWriter(tmp_path / "s", IDS, META, dim=4, chunk_size=4)
    assert w.num_chunks == 3 and w.pending() == [0, 1, 2]
    for k in w.pending():
        sl = w.chunk_rows(k)
        w.write_chunk(k, _rows(k, sl.stop - sl.start), failed=[(IDS[sl.start], "unreadable")] if k == 1 else [])
    w.finalize()
    store = open_store(tmp_path / "s")
    assert isinstance(store.matrix, np.memmap) and store.matrix.dtype == np.float16
    assert store.matrix.shape == (10, 4) and list(store.ids) == list(IDS)
    np.testing.assert_array_equal(store.matrix[8:], _rows(2, 2).astype(np.float16))
    assert store.failed().to_dict("records") == [{"id": IDS[4], "reason": "unreadable"}]
    assert store.meta["failed"] == 1 and store.meta["complete"] is True
    np.testing.assert_array_equal(store.rows_for([IDS[7], IDS[2]]), [7, 2])
    with pytest.raises(StoreError, match="1 of 2 image id"):
        store.rows_for([IDS[0], "ffffffffffffffff"])


def test_incomplete_store_is_refused_and_resume_keeps_done_chunks(tmp_path):
    w = StoreWriter(tmp_path / "s", IDS, META, dim=4, chunk_size=4)
    w.write_chunk(0, _rows(0, 4))
    del w
    with pytest.raises(StoreError, match=r"incomplete store \(1 of 3 chunks"):
        open_store(tmp_path / "s")
    w = StoreWriter(tmp_path / "s", IDS, META, dim=4, chunk_size=4)
    assert w.pending() == [1, 2]
    # Chunk 0 survives the reopen untouched.
    np.testing.assert_array_equal(w.matrix[:4], _rows(0, 4).astype(np.float16))


@pytest.mark.parametrize("change", [{"backend": "keras:Other"}, {"image_size": 64}, {"ids": IDS[:9]}])
def test_resume_with_other_settings_is_refused(tmp_path, change):
    StoreWriter(tmp_path / "s", IDS, META, dim=4, chunk_size=4)
    meta = dict(META, **{k: v for k, v in change.items() if k != "ids"})
    with pytest.raises(StoreError, match="this store was started with"):
        StoreWriter(tmp_path / "s", change.get("ids", IDS), meta, dim=4, chunk_size=4)


def test_meta_that_disagrees_with_the_matrix_is_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", IDS, META, dim=4, chunk_size=5)
    for k in w.pending():
        w.write_chunk(k, _rows(k, 5))
    w.finalize()
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    meta["dim"] = 8
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="says 10 x 8"):
        open_store(tmp_path / "s")


def test_probe_mismatch_names_the_problem(tmp_path):
    v = np.linspace(-1, 1, 16)
    check_probe(tmp_path, v, v + 1e-4, "keras:A")
    with pytest.raises(StoreError, match="differs from keras:B"):
        check_probe(tmp_path, v, v[::-1], "keras:B")
    with pytest.raises(StoreError, match="has 16 dims but keras:C gives 8"):
        check_probe(tmp_path, v, v[:8], "keras:C")
