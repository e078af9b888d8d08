"""``landmark-kaggle score``: JSON keys and values, null subsets, strict and lenient bad input, the sample dataset."""

import json
import subprocess

import pandas as pd
import pytest
from helpers import hid

from landmark_kaggle.cli import main
from landmark_kaggle.data.sample import make_sample
from landmark_kaggle.evaluate.submission import write_submission


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# Public: a1 right at 0.9, a2 wrong at 0.8, a3 (no landmark) predicted at 0.95.
# Private: b1 no prediction, b2 right at 0.7, ties with b3 (no landmark) at 0.7; c1 is Ignored.
SOLUTION = "id,landmarks,Usage\n" + "".join(f"{hid(i)},{lm},{u}\n" for i, lm, u in [
    ("a1", "10", "Public"), ("a2", "20", "Public"), ("a3", "", "Public"), ("b1", "30", "Private"),
    ("b2", "40 41", "Private"), ("b3", "", "Private"), ("c1", "50", "Ignored")])
ROWS = [("a1", "10 0.9"), ("a2", "21 0.8"), ("a3", "10 0.95"), ("b1", ""), ("b2", "41 0.7"), ("b3", "5 0.7"),
        ("c1", "50 0.99")]


def submission_text(rows):
    return "id,landmarks\n" + "".join(f"{hid(i)},{p}\n" for i, p in rows)


def run_json(capsys, *args):
    rc = main(["score", *args, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out), err


def test_json_has_the_documented_keys_and_hand_computed_values(tmp_path, capsys):
    sol = write(tmp_path / "solution.csv", SOLUTION)
    sub = write(tmp_path / "submission.csv", submission_text(ROWS))
    result, _ = run_json(capsys, "--solution", sol, "--submission", sub)
    # All: a3 miss, a1 right (1/2), a2 wrong, b2 right (2/4), b3 miss; M = 4 -> 0.25.
    assert result == {"gap": 0.25, "gap_public": 0.25, "gap_private": 0.5, "top1": 0.5, "n_images": 6,
                      "n_landmark_images": 4, "n_predictions": 5, "n_correct": 2, "n_public": 3, "n_private": 3,
                      "n_ignored": 1, "n_dropped": 0, "n_filled": 0}
    assert main(["score", "--solution", sol, "--submission", sub]) == 0
    text = capsys.readouterr().out
    assert "GAP          0.250000  (6 rows)" in text and "GAP private  0.500000  (3 rows)" in text


def test_help_documents_every_json_key(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    for key in ("gap", "gap_public", "gap_private", "top1", "n_images", "n_landmark_images", "n_predictions"):
        assert f"\n  {key} " in text, key


def test_empty_subsets_are_null(tmp_path, capsys):
    sol = write(tmp_path / "solution.csv", f"id,landmarks\n{hid('a')},1\n{hid('b')},\n")
    sub = write(tmp_path / "submission.csv", f"id,landmarks\n{hid('a')},1 0.2\n{hid('b')},\n")
    result, _ = run_json(capsys, "--solution", sol, "--submission", sub)
    assert result["gap"] == 1.0 and result["gap_public"] is None and result["gap_private"] is None
    assert result["n_public"] == 0


def test_solution_without_landmarks_is_a_clear_error(tmp_path, capsys):
    sol = write(tmp_path / "solution.csv", f"id,landmarks\n{hid('a')},\n")
    sub = write(tmp_path / "submission.csv", f"id,landmarks\n{hid('a')},1 0.2\n")
    assert main(["score", "--solution", sol, "--submission", sub]) == 2
    err = capsys.readouterr().err
    assert f"{sol}: no landmark image among the 1 scored solution rows" in err
    assert "Traceback" not in err


def test_bad_rows_strict_then_lenient(tmp_path, capsys):
    sol = write(tmp_path / "solution.csv", SOLUTION)
    rows = [r for r in ROWS if r[0] != "b1"]  # b1 missing
    rows[1] = ("a2", "21 0.8 22 0.1")  # two predictions in one row: line 3
    rows.append(("d1", "3 0.5"))  # not a test image
    sub = write(tmp_path / "submission.csv", submission_text(rows))
    assert main(["score", "--solution", sol, "--submission", sub]) == 2
    err = capsys.readouterr().err
    assert f"{sub}: line 3: landmarks '21 0.8 22 0.1' holds 4 values: more than one prediction" in err
    result, err = run_json(capsys, "--solution", sol, "--submission", sub, "--lenient")
    assert result["n_dropped"] == 2  # line 3 and d1
    assert result["n_filled"] == 2  # a2 (its row was dropped) and b1
    assert "line 3" in err and "d1000" in err and "'b1000" in err
    # a2 becomes "no prediction": ranking a3 miss, a1 right (1/2), b2 right (2/3), b3 miss; M = 4.
    assert result["gap"] == pytest.approx((1 / 2 + 2 / 3) / 4, abs=1e-15)
    assert result["n_predictions"] == 4


def test_console_script_on_the_sample_dataset(tmp_path):
    make_sample(tmp_path / "data", num_classes=4, max_per_class=8, test_per_class=2, nonlandmark_test=4,
                image_size=(48, 64))
    solution = pd.read_csv(tmp_path / "data" / "solution.csv", dtype=str, keep_default_na=False)
    first = [int(x.split()[0]) if x else -1 for x in solution["landmarks"]]
    # Every landmark image right and every non-landmark image left empty: a perfect score.
    perfect = write_submission(tmp_path / "perfect.csv", solution["id"], first, [0.5] * len(first))
    done = subprocess.run(["landmark-kaggle", "score", "--solution", str(tmp_path / "data" / "solution.csv"),
                           "--submission", str(perfect), "--json"], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["gap"] == 1.0 and result["top1"] == 1.0
    assert result["n_landmark_images"] == 8 and result["n_images"] == 12
    assert result["n_public"] + result["n_private"] == 12
    # The empty sample_submission.csv scores 0, not an error.
    done = subprocess.run(["landmark-kaggle", "score", "--solution", str(tmp_path / "data" / "solution.csv"),
                           "--submission", str(tmp_path / "data" / "sample_submission.csv"), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["gap"] == 0.0
