"""write --estimate: exact when every image is sampled, within its stated tolerance of a real write otherwise."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import REALDATA

from landmark_kaggle.data import gld
from landmark_kaggle.errors import UserError
from tfrec_builder import manifest as mf
from tfrec_builder.cli import main as tfrec_main
from tfrec_builder.estimate import estimate_build
from tfrec_builder.write import write_dataset

# What the sampled estimate below must meet against the real write: a stated tolerance.
TOLERANCE = 0.10


def shard_bytes(manifest: dict, split: str | None = None) -> int:
    return sum(s["bytes"] for s in manifest["shards"] if split in (None, s["split"]))


def varied_real_folder(root: Path, per_photo: int = 12, seed: int = 0) -> Path:
    """The 13 real GLDv2 photos, each at ``per_photo`` random sizes and JPEG qualities (OpenCV), 13 classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, src in enumerate(sorted(REALDATA.glob("*.jpg"))):
        photo = cv2.imread(str(src))
        h, w = photo.shape[:2]
        for c in range(per_photo):
            side = int(rng.integers(40, 400))
            scale = side / max(h, w)
            small = cv2.resize(photo, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])[1]
            image_id = f"{k:02x}{c:014x}"
            path = gld.image_path(root, "train", image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.tobytes())
            rows.append((image_id, 500 + k))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    return root


def test_every_image_sampled_gives_the_written_bytes_exactly(sample, tmp_path):
    kw = dict(image_size=56, shard_mb=0.004, val_fraction=0.25, max_part_gb=0.000022)
    est = estimate_build(sample, progress=False, **kw)
    result = write_dataset(sample, tmp_path / "out", workers=1, progress=False, **kw)
    parts = result["written_parts"]
    assert est["sample"] == est["images"] == sum(sum(m["written"].values()) for m in parts)
    assert est["total"] == {"images": est["images"], "bytes": sum(shard_bytes(m) for m in parts), "ci95": 0.0}
    for split in ("train", "validation"):
        assert est["splits"][split]["bytes"] == sum(shard_bytes(m, split) for m in parts)
    assert [(p["part"], p["bytes"], p["planned_bytes"]) for p in est["parts"]] == [
        (m["parts"]["part"], shard_bytes(m), m["parts"]["table"][k]["planned_bytes"]) for k, m in enumerate(parts)]
    assert est["parts_needed"] == 2 and est["suggested_max_part_gb"] is None


def test_a_sampled_estimate_is_within_tolerance_of_a_real_write(tmp_path):
    data = varied_real_folder(tmp_path / "gld")
    kw = dict(image_size=128, quality=90, shard_mb=1, val_fraction=0.1)
    m = write_dataset(data, tmp_path / "out", workers=1, progress=False, **kw)
    actual = shard_bytes(m)
    est = estimate_build(data, sample=60, seed=0, progress=False, **kw)
    assert (est["images"], est["sample"], est["strata"]) == (156, 60, 1)
    error = est["total"]["bytes"] / actual - 1
    assert abs(error) <= TOLERANCE, f"estimate {est['total']['bytes']:.0f} vs written {actual}: {error:+.1%}"
    assert est["total"]["ci95"] > 0 and abs(est["total"]["bytes"] - actual) <= est["total"]["ci95"]
    for split in ("train", "validation"):
        s = est["splits"][split]
        assert abs(s["bytes"] - shard_bytes(m, split)) <= max(s["ci95"], TOLERANCE * shard_bytes(m, split))
    again = estimate_build(data, sample=60, seed=0, progress=False, **kw)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in est.items() if k != "seconds"}
    assert estimate_build(data, sample=60, seed=1, progress=False, **kw)["total"] != est["total"]


def test_cli_prints_the_estimate_and_writes_nothing(sample, tmp_path, capsys):
    before = sorted(p.relative_to(sample) for p in sample.rglob("*"))
    assert tfrec_main(["write", str(sample), "--estimate", "--image-size", "56", "--shard-mb", "0.004",
                       "--val-fraction", "0.25", "--max-part-gb", "0.000022", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("estimate: 22 of 22 images prepared at --image-size 56 --quality 90 (seed 0, ")
    assert lines[1].startswith("  per image    ") and lines[4].startswith("  total        ")
    assert "± 0 B  (± = 95% interval; the plan's size model says " in lines[4]
    assert "  --max-part-gb 2.2e-05: needs at least 2 parts; the plan makes 3 " in out
    assert lines[-1] == "  every folder stays under 2.2e-05 GB at the upper end of its interval"
    assert sorted(p.relative_to(sample) for p in sample.rglob("*")) == before
    assert tfrec_main(["write", str(sample), "--estimate", "--estimate-sample", "499"]) == 2
    assert "--estimate-sample 499: use at least 500 images" in capsys.readouterr().err
    assert tfrec_main(["write", str(sample)]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_images_denser_than_the_size_model_get_a_warning_and_a_smaller_cap(tmp_path):
    # Noise compresses far worse than photos: the plan's model (calibrated on photos) puts these
    # 30 images in one folder under the cap, the estimate sees them overflow it, and so does a write.
    data = tmp_path / "gld"
    rng = np.random.default_rng(0)
    ids = [f"{k:016x}" for k in range(30)]
    for image_id in ids:
        path = gld.image_path(data, "train", image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
        path.write_bytes(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    pd.DataFrame({"id": ids, "landmark_id": 3}).to_csv(data / "train.csv", index=False)
    kw = dict(image_size=64, val_fraction=0, max_part_gb=0.0001)
    est = estimate_build(data, progress=False, **kw)
    assert len(est["parts"]) == 1 and est["planned_bytes"] < 0.0001e9 < est["total"]["bytes"]
    suggested = est["suggested_max_part_gb"]
    assert est["parts_needed"] >= 2 and 0 < suggested < 0.0001
    upper = est["total"]["bytes"] + est["total"]["ci95"]
    assert 0.9 * 0.0001e9 <= suggested / 0.0001 * upper <= 0.0001e9  # scaled down, it would just fit
    with pytest.raises(UserError, match=r"holds [\d.]+ KB, over --max-part-gb 0.0001"):
        write_dataset(data, tmp_path / "out", workers=1, progress=False, **kw)
    written = shard_bytes(mf.read_json(tmp_path / "out" / "manifest.json"))
    assert written == est["total"]["bytes"]  # 30 images: all sampled, so exact


def test_systematic_failures_in_the_sample_stop_the_estimate(tmp_path):
    data = tmp_path / "gld"
    good = (sorted(REALDATA.glob("*.jpg"))[0]).read_bytes()
    ids = [f"{k:016x}" for k in range(20)]
    for image_id in ids:
        path = gld.image_path(data, "train", image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(good[: len(good) // 3])
    pd.DataFrame({"id": ids, "landmark_id": 1}).to_csv(data / "train.csv", index=False)
    with pytest.raises(UserError, match=r"write would stop: 20 images failed with the same reason 'truncated JPEG"):
        estimate_build(data, progress=False)
    shutil.rmtree(data)
