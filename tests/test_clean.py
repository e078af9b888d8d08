"""Per-class DBSCAN cleaning: the keep/remove rules on hand-made embeddings, bad input, reports and sheets."""

import json

import numpy as np
import pandas as pd
import pytest

from landmark_kaggle.data.embstore import StoreError, StoreWriter
from landmark_kaggle.data.sample import make_sample
from tfrec_builder import cli, cluster
from tfrec_builder.clean import clean_dataset

DIM = 16


def _unit(i, jitter=0.0, seed=0):
    v = np.zeros(DIM)
    v[i] = 1.0
    return v + jitter * np.random.default_rng(seed).normal(size=DIM)


def _write(tmp_path, table, vectors, store_ids=None):
    """A train.csv folder plus a store holding ``vectors`` for ``store_ids`` (default: the table's ids)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    pd.DataFrame(table, columns=["id", "landmark_id"]).to_csv(data / "train.csv", index=False)
    ids = np.array([r[0] for r in table] if store_ids is None else store_ids)
    w = StoreWriter(tmp_path / "store", ids, {"backend": "hand", "weights_sha256": "none", "image_size": 0},
                    dim=DIM, chunk_size=4)
    vectors = np.asarray(vectors, dtype=np.float32)
    for k in w.pending():
        w.write_chunk(k, vectors[w.chunk_rows(k)])
    w.finalize()
    return data, tmp_path / "store"


def _hand_made():
    """Classes whose right answer is obvious; returns rows, vectors and the expected outliers."""
    rows, vecs, expected = [], [], []

    def add(lid, vec, gone=None):
        image_id = f"{len(rows):016x}"
        rows.append((image_id, lid))
        vecs.append(vec)
        if gone:
            expected.append((image_id, lid, *gone))

    for s in range(5):
        add(1, _unit(0, 0.05, s))
    add(1, _unit(1), (-1, "noise"))  # one stray image: noise
    for s in range(4):
        add(2, _unit(0, 0.05, s))
    for s in range(2):
        add(2, _unit(2, 0.05, s), (1, "minor_cluster"))  # a smaller second cluster
    for i in range(3):
        add(3, _unit(i))  # three unrelated images: no cluster at all -> kept whole
    add(4, _unit(0))
    add(4, _unit(3))  # two images: below --min-class-size, untouched
    for _ in range(4):
        add(5, _unit(4))  # identical images: one cluster, all kept
    for s in range(2):
        add(6, _unit(5, 0.05, s))
    for s in range(2):
        add(6, _unit(6, 0.05, s))  # two clusters tie for largest: both kept
    for s in range(3):
        add(7, _unit(0, 0.05, s))
    add(7, np.full(DIM, np.nan))  # unembedded: kept, reported
    add(7, np.zeros(DIM))  # zero vector: cosine undefined, same treatment
    add(8, _unit(0))  # a class with a single image
    return rows, vecs, expected


def test_rules_on_hand_made_embeddings(tmp_path):
    rows, vecs, expected = _hand_made()
    data, store = _write(tmp_path, rows, vecs)
    report = clean_dataset(store, data, tmp_path / "out", sheets=0, jobs=1, progress=False)
    got = pd.read_csv(tmp_path / "out" / "outliers.csv", dtype={"id": str})
    assert list(got.itertuples(index=False, name=None)) == sorted(expected, key=lambda r: (r[1], r[0]))
    classes = pd.read_csv(tmp_path / "out" / "classes.csv").set_index("landmark_id")
    assert classes["status"].to_dict() == {1: "cleaned", 2: "cleaned", 3: "no_cluster", 4: "too_small",
                                           5: "unchanged", 6: "unchanged", 7: "unchanged", 8: "too_small"}
    assert classes.loc[7, ["images", "clustered", "kept"]].tolist() == [5, 3, 5]
    assert report["images"] == {"in": len(rows), "removed": 3, "kept": len(rows) - 3, "unembedded_kept": 2}
    assert report["unembedded_ids"] == [rows[-3][0], rows[-2][0]]
    assert report["classes"]["in"] == 8 and report["classes"]["out"] == 0 and report["classes"]["touched"] == 2
    assert report["reasons"] == {"minor_cluster": 2, "noise": 1}
    assert report["buckets"]["5 < K <= 10"] == {"classes_in": 2, "classes_touched": 2, "classes_out": 0,
                                                "images_in": 12, "images_removed": 3, "images_kept": 9}
    assert report["noise"] is None
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["settings"]["eps"] == 0.33 and on_disk["settings"]["min_samples"] == 2


def test_single_image_class_with_min_class_size_one_is_kept(tmp_path):
    rows, vecs, _ = _hand_made()
    data, store = _write(tmp_path, rows, vecs)
    clean_dataset(store, data, tmp_path / "out", sheets=0, jobs=1, min_class_size=1, progress=False)
    classes = pd.read_csv(tmp_path / "out" / "classes.csv").set_index("landmark_id")
    # One image: DBSCAN finds no cluster, so the class is kept whole rather than deleted.
    assert classes.loc[8, ["status", "kept", "removed"]].tolist() == ["no_cluster", 1, 0]
    # Two far-apart images: likewise no cluster, nothing removed.
    assert classes.loc[4, ["status", "kept"]].tolist() == ["no_cluster", 2]


def test_auto_eps_tightens_a_class_with_a_loose_outlier(tmp_path):
    rng = np.random.default_rng(1)
    core = np.tile(_unit(0), (12, 1)) + 0.03 * rng.normal(size=(12, DIM))
    loose = _unit(0) + 0.75 * _unit(1)  # cosine distance ~0.2 from the class: inside eps=0.33
    rows = [(f"{i:016x}", 9) for i in range(13)]
    data, store = _write(tmp_path, rows, np.vstack([core, loose]))
    fixed = clean_dataset(store, data, tmp_path / "fixed", sheets=0, jobs=1, progress=False)
    auto = clean_dataset(store, data, tmp_path / "auto", eps="auto", sheets=0, jobs=1, progress=False)
    assert fixed["images"]["removed"] == 0
    assert auto["images"]["removed"] == 1
    assert pd.read_csv(tmp_path / "auto" / "outliers.csv", dtype={"id": str})["id"].tolist() == [rows[12][0]]
    assert 0.33 * 0.5 <= auto["eps_per_class"]["9"] < 0.2


def test_knee_of_a_hand_made_curve():
    curve = np.array([0.1, 0.1, 0.11, 0.12, 0.12, 0.9])
    assert cluster.knee(curve) == 4


def test_store_missing_data_ids_is_an_error_naming_both(tmp_path, capsys):
    rows, vecs, _ = _hand_made()
    data, store = _write(tmp_path, rows, vecs[:-1], store_ids=[r[0] for r in rows[:-1]])
    with pytest.raises(StoreError, match=rf"1 of {len(rows)} image id.*first: {rows[-1][0]}.*train.csv"):
        clean_dataset(store, data, tmp_path / "out", sheets=0, jobs=1, progress=False)
    code = cli.main(["clean", "--embeddings", str(store), "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 2 and "not in the store" in capsys.readouterr().err


def test_clean_on_the_sample_finds_the_planted_noise_and_draws_sheets(tmp_path):
    data = tmp_path / "sample"
    make_sample(data, num_classes=5, max_per_class=12, image_size=(48, 64), noise_fraction=0.1, seed=3)
    train = pd.read_csv(data / "train.csv", dtype={"id": str})
    noise = set(pd.read_csv(data / "noise.csv", dtype={"id": str})["id"])
    assert noise
    # Embeddings that know the truth: a direction per true landmark, a random one per noise image.
    lids = sorted(train["landmark_id"].unique())
    rng = np.random.default_rng(0)
    vecs = [_unit(lids.index(lid), 0.02, i) if image_id not in noise else np.r_[np.zeros(8), rng.normal(size=8)]
            for i, (image_id, lid) in enumerate(zip(train["id"], train["landmark_id"], strict=True))]
    _, store = _write(tmp_path, list(zip(train["id"], train["landmark_id"], strict=True)), vecs)
    report = clean_dataset(store, data, tmp_path / "out", jobs=2, progress=False)
    assert report["noise"]["precision"] == 1.0 and report["noise"]["recall"] == 1.0
    sheets = sorted((tmp_path / "out" / "sheets").glob("*.png"))
    assert len(sheets) == report["classes"]["touched"] and sheets
    assert sheets[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_class_with_no_usable_embedding_is_reported_and_extra_store_ids_are_counted(tmp_path):
    rows = [(f"{i:016x}", 1 if i < 4 else 2) for i in range(6)]
    vecs = [_unit(0, 0.05, i) for i in range(4)] + [np.full(DIM, np.nan)] * 2
    extra = [f"{99:016x}"]
    data, store = _write(tmp_path, rows, vecs + [_unit(3)], store_ids=[r[0] for r in rows] + extra)
    report = clean_dataset(store, data, tmp_path / "out", sheets=0, jobs=1, progress=False)
    classes = pd.read_csv(tmp_path / "out" / "classes.csv").set_index("landmark_id")
    assert classes.loc[2, ["images", "clustered", "kept", "status"]].tolist() == [2, 0, 2, "too_small"]
    assert report["classes"]["in"] == 2 and report["images"]["unembedded_kept"] == 2
    assert report["store_ids_not_in_data"] == 1 and report["images"]["removed"] == 0


def test_center_reveals_an_outlier_hidden_by_a_common_direction(tmp_path):
    # Two classes whose embeddings all share one large common component, as a briefly trained
    # network's do: every pairwise cosine is ~0.99, so eps=0.33 sees one blob per class.
    common = 20 * _unit(0)
    a = np.vstack([common + _unit(1, 0.05, seed=s) for s in range(5)] + [common + _unit(3)])
    b = np.vstack([common + _unit(2, 0.05, seed=s + 10) for s in range(5)])
    rows = [(f"{i:016x}", 1) for i in range(6)] + [(f"{i + 6:016x}", 2) for i in range(5)]
    data, store = _write(tmp_path, rows, np.vstack([a, b]))
    plain = clean_dataset(store, data, tmp_path / "plain", sheets=0, jobs=1, progress=False)
    centred = clean_dataset(store, data, tmp_path / "centred", sheets=0, jobs=1, progress=False, center=True)
    assert plain["images"]["removed"] == 0
    got = pd.read_csv(tmp_path / "centred" / "outliers.csv", dtype={"id": str})
    assert got["id"].tolist() == [rows[5][0]] and centred["settings"]["center"] is True
