"""submission.csv and solution CSV: exact round trip, row-named errors, lenient counting, hand-scored score()."""

import math

import numpy as np
import pandas as pd
import pytest
from helpers import hid

from landmark_kaggle.evaluate.metrics import MetricError
from landmark_kaggle.evaluate.submission import (
    SubmissionError,
    read_solution,
    read_submission,
    score,
    validate_submission,
    write_submission,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_is_exact(tmp_path):
    ids = [hid(x) for x in ("a1", "a2", "b1", "b2", "c1")]
    lids = [12, -1, 203093, None, 0]
    confs = [0.1 + 0.2, 0.5, 1 / 3, float("nan"), 1e-7]
    path = write_submission(tmp_path / "sub" / "submission.csv", ids, lids, confs)
    back = read_submission(path)
    assert back["id"].tolist() == ids
    assert back["landmark_id"].tolist() == [12, -1, 203093, -1, 0]
    assert back["confidence"].iloc[0] == 0.1 + 0.2  # bit-exact, not approx
    assert back["confidence"].iloc[2] == 1 / 3
    assert back["confidence"].iloc[4] == 1e-7
    assert math.isnan(back["confidence"].iloc[1]) and math.isnan(back["confidence"].iloc[3])
    assert back["line"].tolist() == [2, 3, 4, 5, 6]
    assert not (tmp_path / "sub" / "submission.csv.tmp").exists()


def test_written_text_is_the_competition_format(tmp_path):
    path = write_submission(tmp_path / "s.csv", [hid("a"), hid("b")], [7, -1], [0.25, 0.0])
    assert path.read_text() == f"id,landmarks\n{hid('a')},7 0.25\n{hid('b')},\n"
    # numpy scalars are written as plain numbers, not np.float64(...)
    write_submission(tmp_path / "n.csv", np.array([hid("a")]), np.array([3]), np.array([0.5], np.float32))
    assert (tmp_path / "n.csv").read_text().splitlines()[1] == f"{hid('a')},3 0.5"


@pytest.mark.parametrize("lids, confs, message", [
    ([1, 2], [0.5, float("nan")], "row 1 .*confidence nan is not finite"),
    ([1, -4], [0.5, 0.5], "row 1 .*is negative"),
    ([1, 2.5], [0.5, 0.5], "row 1 .*not an integer"),
])
def test_write_rejects_bad_rows(tmp_path, lids, confs, message):
    with pytest.raises(SubmissionError, match=message):
        write_submission(tmp_path / "s.csv", [hid("a"), hid("b")], lids, confs)
    assert not (tmp_path / "s.csv").exists()


def test_write_rejects_duplicate_ids(tmp_path):
    with pytest.raises(SubmissionError, match="appears more than once"):
        write_submission(tmp_path / "s.csv", [hid("a"), hid("a")], [1, 2], [0.5, 0.5])


@pytest.mark.parametrize("cell, message", [
    ("1 0.5 2 0.3", "holds 4 values: more than one prediction"),
    ("-3 0.5", "negative landmark id"),
    ("abc 0.5", "landmark id that is not an integer"),
    ("3 abc", "confidence that is not a number"),
    ("3 inf", "infinite or NaN"),
    ("3 NaN", "infinite or NaN"),
    ("3", "must be '<landmark_id> <confidence>' or empty"),
])
def test_strict_read_names_file_and_line(tmp_path, cell, message):
    path = write(tmp_path / "submission.csv", f"id,landmarks\n{hid('a')},4 0.9\n{hid('b')},{cell}\n")
    with pytest.raises(SubmissionError, match=message) as err:
        read_submission(path)
    assert str(err.value).startswith(f"{path}: line 3: ")
    assert str(err.value).endswith("(1 bad row(s) in all; --lenient drops and counts them)")


def test_strict_read_structure_errors(tmp_path):
    bad_id = write(tmp_path / "a.csv", "id,landmarks\nNOT-AN-ID,4 0.9\n")
    with pytest.raises(SubmissionError, match=r"a.csv: line 2: id 'NOT-AN-ID' is not 16 lowercase hex"):
        read_submission(bad_id)
    fields = write(tmp_path / "b.csv", f"id,landmarks\n{hid('a')},4 0.9\n{hid('b')},4 0.9,extra\n")
    with pytest.raises(SubmissionError, match=r"b.csv: line 3: has 3 field\(s\), expected 2"):
        read_submission(fields)
    header = write(tmp_path / "c.csv", f"id,prediction\n{hid('a')},4 0.9\n")
    with pytest.raises(SubmissionError, match=r"c.csv: line 1: header"):
        read_submission(header)
    latin1 = tmp_path / "d.csv"
    latin1.write_bytes(f"id,landmarks\n{hid('a')},4 0.9\n{hid('b')},4 0.9\xe9\n".encode("latin-1"))
    with pytest.raises(SubmissionError, match=r"d.csv: line 3: not UTF-8 text \(byte 0xe9\)"):
        read_submission(latin1)
    with pytest.raises(SubmissionError, match="file not found"):
        read_submission(tmp_path / "none.csv")


def test_quoted_and_crlf_files_read_like_plain_ones(tmp_path):
    plain = write(tmp_path / "plain.csv", f"id,landmarks\n{hid('a')},12 0.5\n{hid('b')},\n{hid('c')},3 1e-3\n")
    # Quotes send the file through the csv module instead of pandas' C reader: same frame, same lines.
    quoted = write(tmp_path / "quoted.csv", f'id,landmarks\n{hid("a")},"12 0.5"\n"{hid("b")}",\n{hid("c")},3 1e-3\n')
    crlf = write(tmp_path / "crlf.csv", plain.read_text().replace("\n", "\r\n"))
    expected = read_submission(plain)
    assert expected["landmark_id"].tolist() == [12, -1, 3] and expected["confidence"].iloc[2] == 0.001
    for other in (quoted, crlf):
        pd.testing.assert_frame_equal(read_submission(other), expected)


def test_lenient_read_drops_and_counts(tmp_path):
    path = write(tmp_path / "submission.csv", "\n".join([
        "id,landmarks", f"{hid('a')},4 0.9", f"{hid('b')},4 inf", f"{hid('c')},", "zz,1 0.1", f"{hid('d')},8 0.2", ""]))
    dropped = []
    with pytest.warns(UserWarning, match="dropped 2 bad row"):
        frame = read_submission(path, lenient=True, dropped=dropped)
    assert frame["id"].tolist() == [hid("a"), hid("c"), hid("d")]
    assert frame["landmark_id"].tolist() == [4, -1, 8]
    assert [d.split(": ")[1] for d in dropped] == ["line 3", "line 5"]


def test_validate_against_test_ids(tmp_path):
    path = write(tmp_path / "s.csv", f"id,landmarks\n{hid('a')},1 0.5\n{hid('f')},2 0.5\n{hid('a')},3 0.1\n")
    frame = read_submission(path)
    test_ids = [hid("a"), hid("b")]
    with pytest.raises(SubmissionError, match=r"s.csv: line 3: id 'f0+' is not a test image .*1 repeated, "
                                              r"1 unknown, 1 missing"):
        validate_submission(frame, test_ids, source=path)
    dropped = []
    with pytest.warns(UserWarning):
        fixed = validate_submission(frame, test_ids, source=path, lenient=True, dropped=dropped)
    assert sorted(fixed["id"]) == test_ids
    assert fixed.set_index("id")["landmark_id"].to_dict() == {hid("a"): 1, hid("b"): -1}
    assert len(dropped) == 3 and "test image 'b0" in dropped[2]


def test_validate_names_rows_of_an_in_memory_frame():
    # predict validates its frame before writing: no file, so rows are named by position.
    frame = pd.DataFrame({"id": [hid("a"), hid("a")], "landmark_id": [1, 2], "confidence": [0.5, 0.4]})
    with pytest.raises(SubmissionError, match=r"^predictions: row 1: id 'a0+' appears more than once"):
        validate_submission(frame, [hid("a")], source="predictions")


def test_read_solution(tmp_path):
    path = write(tmp_path / "solution.csv",
                 f"id,landmarks,Usage\n{hid('a')},4 17,Public\n{hid('b')},,Private\n{hid('c')},9,Ignored\n")
    sol = read_solution(path)
    assert sol["landmarks"].tolist() == [(4, 17), (), (9,)]
    assert sol["usage"].tolist() == ["Public", "Private", "Ignored"]
    no_usage = read_solution(write(tmp_path / "plain.csv", f"id,landmarks\n{hid('a')},4\n"))
    assert no_usage["usage"].tolist() == [""]
    with pytest.raises(SubmissionError, match=r"bad.csv: line 3: Usage 'public' is not one of") as err:
        read_solution(write(tmp_path / "bad.csv", f"id,landmarks,Usage\n{hid('a')},4,Public\n{hid('b')},,public\n"))
    assert "--lenient" not in str(err.value)  # a solution has no lenient mode
    with pytest.raises(SubmissionError, match=r"neg.csv: line 2: landmarks '-4' must be landmark ids"):
        read_solution(write(tmp_path / "neg.csv", f"id,landmarks\n{hid('a')},-4\n"))
    with pytest.raises(SubmissionError, match="no rows"):
        read_solution(write(tmp_path / "empty.csv", "id,landmarks\n"))


# a1, a2 landmark images and a3 a non-landmark in Public; b1, b2 (two landmarks), b3 in Private;
# c1, c2 Ignored. Predictions: a3 0.95 (miss: no landmark), a1 0.9 right, a2 0.8 wrong,
# b2 0.7 right and b3 0.7 miss (tie: b2 ranks first by id), b1 none, c1/c2 confident but ignored.
SOLUTION = [("a1", "10", "Public"), ("a2", "20", "Public"), ("a3", "", "Public"), ("b1", "30", "Private"),
            ("b2", "40 41", "Private"), ("b3", "", "Private"), ("c1", "50", "Ignored"), ("c2", "", "Ignored")]
SUBMISSION = [("a1", "10 0.9"), ("a2", "21 0.8"), ("a3", "10 0.95"), ("b1", ""), ("b2", "41 0.7"),
              ("b3", "5 0.7"), ("c1", "50 0.99"), ("c2", "1 0.99")]


@pytest.fixture
def scored_files(tmp_path):
    sol = write(tmp_path / "solution.csv",
                "id,landmarks,Usage\n" + "".join(f"{hid(i)},{lm},{u}\n" for i, lm, u in SOLUTION))
    sub = write(tmp_path / "submission.csv", "id,landmarks\n" + "".join(f"{hid(i)},{p}\n" for i, p in SUBMISSION))
    return sol, sub


def test_score_hand_computed(scored_files):
    sol, sub = scored_files
    result = score(read_solution(sol), read_submission(sub))
    # All: ranks a3 miss, a1 right (1/2), a2 wrong, b2 right (2/4), b3 miss; M = 4 -> (1/2 + 1/2) / 4.
    assert result["gap"] == 0.25
    assert result["gap_public"] == 0.25  # a3 miss, a1 right (1/2), a2 wrong; M = 2
    assert result["gap_private"] == 0.5  # b2 right (1/1), b3 miss; M = 2
    assert result["top1"] == 0.5
    assert {k: result[k] for k in ("n_images", "n_landmark_images", "n_predictions", "n_correct", "n_public",
                                   "n_private", "n_ignored")} == {
        "n_images": 6, "n_landmark_images": 4, "n_predictions": 5, "n_correct": 2, "n_public": 3,
        "n_private": 3, "n_ignored": 2}
    # Leaving a3 and b3 out of the ranking: a1 (1/1), a2 wrong, b2 (2/3) -> (1 + 2/3) / 4.
    ignoring = score(read_solution(sol), read_submission(sub), ignore_nonlandmark=True)
    assert ignoring["gap"] == pytest.approx((1 + 2 / 3) / 4, abs=1e-15)


def test_score_empty_subsets_are_none_and_no_landmarks_is_an_error(tmp_path):
    sub = read_submission(write(tmp_path / "s.csv", f"id,landmarks\n{hid('a')},1 0.5\n{hid('b')},\n"))
    plain = read_solution(write(tmp_path / "plain.csv", f"id,landmarks\n{hid('a')},1\n{hid('b')},\n"))
    result = score(plain, sub)
    assert result["gap"] == 1.0 and result["gap_public"] is None and result["gap_private"] is None
    only_private_landmarks = read_solution(write(tmp_path / "p.csv",
                                                 f"id,landmarks,Usage\n{hid('a')},1,Private\n{hid('b')},,Public\n"))
    assert score(only_private_landmarks, sub)["gap_public"] is None
    nothing = read_solution(write(tmp_path / "none.csv", f"id,landmarks\n{hid('a')},\n{hid('b')},\n"))
    with pytest.raises(MetricError, match="no landmark image among the 2 scored"):
        score(nothing, sub)


def test_score_is_strict_about_ids(scored_files):
    sol, sub = scored_files
    partial = read_submission(sub).iloc[1:]
    with pytest.raises(SubmissionError, match="has no row"):
        score(read_solution(sol), partial)
