"""A systematic failure (many images, one reason) stops write with its reason; a few bad images are counted."""

from pathlib import Path

import cv2
import pandas as pd
import pytest
from helpers import REALDATA

from landmark_kaggle.data import gld
from tfrec_builder import manifest as mf
from tfrec_builder.cli import main as tfrec_main
from tfrec_builder.failures import FailureWatch, Systematic, threshold
from tfrec_builder.verify import verify_dataset

ARGS = ["--image-size", "64", "--workers", "1", "--val-fraction", "0", "--no-progress"]


def _good_jpeg(k: int) -> bytes:
    photo = cv2.imread(str(sorted(REALDATA.glob("*.jpg"))[k % 13]))
    return cv2.imencode(".jpg", cv2.resize(photo, (48, 36), interpolation=cv2.INTER_AREA))[1].tobytes()


def _folder(root: Path, contents: list[bytes | None]) -> list[Path]:
    """A GLDv2 folder of these files (None: listed in train.csv, no file), two classes; their paths."""
    paths = []
    for k, data in enumerate(contents):
        path = gld.image_path(root, "train", f"{k:016x}")
        paths.append(path)
        if data is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    pd.DataFrame({"id": [f"{k:016x}" for k in range(len(contents))],
                  "landmark_id": [7 + k % 2 for k in range(len(contents))]}).to_csv(root / "train.csv", index=False)
    return paths


def test_threshold_is_max_of_ten_and_five_percent():
    assert [threshold(n) for n in (0, 100, 200, 201, 1000, 2500)] == [10, 10, 10, 10.05, 50, 125]
    watch = FailureWatch()
    watch.add(100, [{"id": f"{k:016x}", "reason": f"corrupt JPEG header (no marker at byte {k})"} for k in range(10)])
    watch.check()  # ten of a hundred: still bad images
    watch.add(0, [{"id": "f" * 16, "reason": "corrupt JPEG header (no marker at byte 99)"}])
    with pytest.raises(Systematic) as caught:
        watch.check()  # eleven, one reason once the byte offsets are masked
    assert caught.value.count == 11 and caught.value.key == "corrupt JPEG header (no marker at byte #)"
    assert str(caught.value).startswith("11 images failed with the same reason "
                                        "'corrupt JPEG header (no marker at byte 0)' (more than max(10, 5%) of the "
                                        "100 images prepared so far")
    mixed = FailureWatch()
    mixed.add(30, [{"id": f"{k:016x}", "reason": ["missing file", "empty file (0 bytes)"][k % 2]} for k in range(20)])
    mixed.check()  # twenty failures, but ten and ten: no single reason is systematic
    every = FailureWatch()
    every.add(3, [{"id": f"{k:016x}", "reason": "missing file"} for k in range(3)])
    every.check()  # three is no pattern yet; with nothing written at the end it is
    with pytest.raises(Systematic, match=r"every one of the 3 images failed \(3 of them with the reason 'missing"):
        every.check(final=True)


def test_a_folder_of_truncated_files_stops_the_write_and_a_fixed_one_resumes(tmp_path, capsys):
    good = [_good_jpeg(k) for k in range(30)]
    paths = _folder(tmp_path / "gld", [g[: len(g) // 2] for g in good])
    out = tmp_path / "out"
    assert tfrec_main(["write", str(tmp_path / "gld"), "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "30 images failed with the same reason 'truncated JPEG (no end-of-image marker)' (more than max(10, 5%) " \
           "of the 30 images prepared so far" in err
    assert f"first files: {paths[0]}, {paths[1]}, {paths[2]}, {paths[3]}, {paths[4]}" in err
    assert "1 finished shard(s) holding such failures were removed" in err
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrec"))
    for path, data in zip(paths, good, strict=True):  # the copy is redone properly
        path.write_bytes(data)
    assert tfrec_main(["write", str(tmp_path / "gld"), "--out", str(out), *ARGS]) == 0
    m = mf.read_json(out / "manifest.json")
    assert m["failed"] == 0 and m["written"]["train"] == 30 and verify_dataset(out) == []


def test_two_corrupt_files_are_counted_and_skipped(tmp_path, capsys):
    contents: list[bytes | None] = [_good_jpeg(k) for k in range(40)]
    contents[3] = contents[3][: len(contents[3]) // 2]
    contents[17] = None
    _folder(tmp_path / "gld", contents)
    assert tfrec_main(["write", str(tmp_path / "gld"), "--out", str(tmp_path / "out"), *ARGS]) == 0
    assert "failed 2 (reasons in manifest.json)" in capsys.readouterr().out
    m = mf.read_json(tmp_path / "out" / "manifest.json")
    assert {f["id"]: f["reason"] for f in m["failed_images"]} == {
        f"{3:016x}": "truncated JPEG (no end-of-image marker)", f"{17:016x}": "missing file"}
    assert m["written"]["train"] == 38 and m["balanced"]


@pytest.mark.parametrize("missing, code", [(10, 0), (11, 2)])
def test_ten_missing_of_a_hundred_are_bad_images_eleven_are_systematic(tmp_path, capsys, missing, code):
    good = _good_jpeg(0)
    _folder(tmp_path / "gld", [None if k % 9 == 4 and k // 9 < missing else good for k in range(100)])
    # Shards of about ten images: the rule is judged over every shard finished so far.
    args = [*ARGS, "--shard-mb", "0.02"]
    assert tfrec_main(["write", str(tmp_path / "gld"), "--out", str(tmp_path / "out"), *args]) == code
    captured = capsys.readouterr()
    if code == 0:
        assert mf.read_json(tmp_path / "out" / "manifest.json")["failed"] == 10
    else:
        assert "11 images failed with the same reason 'missing file'" in captured.err


def test_a_build_where_every_image_failed_is_no_success(tmp_path, capsys):
    _folder(tmp_path / "gld", [b"not a jpeg at all", None, b""])
    assert tfrec_main(["write", str(tmp_path / "gld"), "--out", str(tmp_path / "out"), *ARGS]) == 2
    assert "every one of the 3 images failed (1 of them with the reason " in capsys.readouterr().err
