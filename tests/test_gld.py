"""GLDv2 data layer: indexing, label maps, and a clear message for every kind of bad input."""

from pathlib import Path

import numpy as np
import pytest

from landmark_kaggle.data import gld
from landmark_kaggle.data.gld import GLDError

A = "0123456789abcdef"
B = "fedcba9876543210"
C = "00000000000000aa"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def touch_images(root: Path, split: str, ids):
    for i in ids:
        p = gld.image_path(root, split, i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8")


def test_image_path_layout(tmp_path):
    assert gld.image_path(tmp_path, "train", A) == tmp_path / "train" / "0" / "1" / "2" / f"{A}.jpg"


def test_train_csv_index_and_label_map(tmp_path):
    write(tmp_path, "train.csv", f"id,landmark_id\n{A},50\n{B},7\n{C},50\n")
    index = gld.load_train_index(tmp_path)
    assert index.frame["id"].tolist() == [A, B, C]
    # Labels are contiguous in ascending landmark_id order: 7 -> 0, 50 -> 1.
    assert index.frame["label"].tolist() == [1, 0, 1]
    assert index.label_map.to_dict("list") == {"label": [0, 1], "landmark_id": [7, 50], "count": [1, 2]}
    assert index.frame["path"][1] == str(gld.image_path(tmp_path, "train", B))
    assert index.num_classes == 2


def test_train_clean_csv_is_expanded(tmp_path):
    write(tmp_path, "train_clean.csv", f"landmark_id,images\n9,{A} {B}\n3,{C}\n")
    index = gld.load_train_index(tmp_path)
    assert sorted(zip(index.frame["id"], index.frame["landmark_id"], strict=True)) == [(C, 3), (A, 9), (B, 9)]
    assert index.frame.set_index("id")["label"].to_dict() == {A: 1, B: 1, C: 0}


def test_train_csv_preferred_over_clean(tmp_path):
    write(tmp_path, "train.csv", f"id,landmark_id\n{A},1\n")
    write(tmp_path, "train_clean.csv", f"landmark_id,images\n2,{B}\n")
    assert gld.load_train_index(tmp_path).frame["id"].tolist() == [A]


@pytest.mark.parametrize("text, message", [
    ("id\n" + A + "\n", r"train.csv: line 1: missing column\(s\) landmark_id"),
    (f"id,landmark_id,url\n{A},1,x\n", r"train.csv: line 1: unexpected column\(s\) url"),
    (f"id,landmark_id\n{A},1\n{B},seven\n", r"train.csv: line 3: landmark_id 'seven' is not a non-negative integer"),
    (f"id,landmark_id\n{A},1\n{B},-4\n", r"train.csv: line 3: landmark_id '-4'"),
    (f"id,landmark_id\n{A},1.5\n", r"train.csv: line 2: landmark_id '1.5'"),
    (f"id,landmark_id\n{A},1\n{B},1234567890123456789012\n", r"line 3: landmark_id '1234567890123456789012'"),
    (f"id,landmark_id\n{A},1\n{B},\u0663\n", r"line 3: landmark_id '\u0663'"),
    (f"id,landmark_id\n{A},1\nABCDEF0123456789,2\n", r"line 3: id 'ABCDEF0123456789' is not 16 lowercase hex"),
    (f"id,landmark_id\n{A[:-1]},1\n", r"train.csv: line 2: id '0123456789abcde' is not 16"),
    (f"id,landmark_id\n{A},1\n{B},2\n{A},3\n", r"line 4: duplicate id 0123456789abcdef \(first seen on line 2"),
    ("", r"train.csv: the CSV is empty"),
    ("id,landmark_id\n", r"train.csv: the CSV has a header but no rows"),
])
def test_bad_train_csv_names_file_and_line(tmp_path, text, message):
    write(tmp_path, "train.csv", text)
    with pytest.raises(GLDError, match=message):
        gld.load_train_index(tmp_path)


def test_bad_train_clean_csv(tmp_path):
    write(tmp_path, "train_clean.csv", f"landmark_id,images\n9,{A}\n3,{B} xyz\n")
    with pytest.raises(GLDError, match=r"train_clean.csv: line 3: id 'xyz'"):
        gld.load_train_index(tmp_path)
    write(tmp_path, "train_clean.csv", f"landmark_id,images\n9,{A}\n3,{B} {A}\n")
    with pytest.raises(GLDError, match=r"train_clean.csv: line 3: duplicate id " + A):
        gld.load_train_index(tmp_path)


def test_not_a_gldv2_folder(tmp_path):
    with pytest.raises(GLDError, match="no train.csv or train_clean.csv"):
        gld.load_train_index(tmp_path)
    with pytest.raises(GLDError, match="data folder not found"):
        gld.load_train_index(tmp_path / "nowhere")


def test_missing_files_are_counted_and_named(tmp_path):
    ids = [f"{i:016x}" for i in range(10)]
    write(tmp_path, "train.csv", "id,landmark_id\n" + "".join(f"{i},{n % 3}\n" for n, i in enumerate(ids)))
    touch_images(tmp_path, "train", ids[:7])
    index = gld.load_train_index(tmp_path)
    with pytest.raises(GLDError, match=r"3 of 10 train image file\(s\) are missing \(first: "
                                       + ids[7] + ", " + ids[8] + ", " + ids[9] + r"\); pass --skip-missing"):
        gld.drop_missing(index, skip_missing=False)
    kept, missing = gld.drop_missing(index, skip_missing=True, workers=4)
    assert missing == ids[7:]
    assert kept.frame["id"].tolist() == ids[:7]
    # Dropping files never renumbers classes.
    assert kept.num_classes == 3 and kept.frame["label"].tolist() == [n % 3 for n in range(7)]


def test_test_index_from_sample_submission_or_tree(tmp_path):
    touch_images(tmp_path, "test", [B, A])
    index = gld.load_test_index(tmp_path)
    assert index.frame["id"].tolist() == [A, B] and (index.frame["label"] == -1).all()
    write(tmp_path, "sample_submission.csv", f"id,landmarks\n{B},\n")
    assert gld.load_test_index(tmp_path).frame["id"].tolist() == [B]


def test_label_map_round_trip_and_checks(tmp_path):
    lm = gld.make_label_map(np.array([30, 10, 30, 20, 30]))
    assert lm.to_dict("list") == {"label": [0, 1, 2], "landmark_id": [10, 20, 30], "count": [1, 1, 3]}
    path = gld.write_label_map(lm, tmp_path / "label_map.csv")
    assert gld.read_label_map(path).equals(lm)
    write(tmp_path, "bad.csv", "label,landmark_id,count\n0,10,1\n2,20,1\n")
    with pytest.raises(GLDError, match=r"bad.csv: line 3: labels must be 0..C-1"):
        gld.read_label_map(tmp_path / "bad.csv")
    write(tmp_path, "bad2.csv", "label,landmark_id,count\n0,10,1\n1,10,1\n")
    with pytest.raises(GLDError, match=r"bad2.csv: line 3: landmark_id must be strictly ascending"):
        gld.read_label_map(tmp_path / "bad2.csv")


def test_buckets_match_table_2_edges():
    counts = np.array([1, 5, 6, 10, 11, 20, 21, 5000])
    assert gld.class_buckets(counts) == {"K > 20": 2, "10 < K <= 20": 2, "5 < K <= 10": 2, "K <= 5": 2}
    assert [gld.bucket_of(k) for k in (5, 6, 20, 21)] == ["K <= 5", "5 < K <= 10", "10 < K <= 20", "K > 20"]
