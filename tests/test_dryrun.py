"""dry-run --quick end to end: every stage runs, the report's figures are sane, the submission is valid, and
its GAP beats guessing on the same sample. Both ways: the default (ImageNet EfficientNet-Lite0 features clean
the sample, then fine-tuning from ImageNet) and ``--no-imagenet`` (self-cleaning, training from scratch).

Measured on the quick sample (87 training images, 3 of them noise): ImageNet features removed exactly the 3
noise images (precision and recall 1.000) and the fine-tuned model scored GAP 0.607 / 0.949 with retrieval,
val top-1 0.857; without ImageNet the quick run scored 0.28 / 0.30 and, later, 0.33 / 0.37 (val top-1 0.778)."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import chance_gap, run_cli

from landmark_kaggle.evaluate.submission import read_solution, read_submission, validate_submission

STAGES = ["sample", "stats", "embed", "clean", "write", "verify", "train", "embed-index", "predict",
          "predict+retrieval", "score"]
SELF_CLEANING = ["write noisy", "train noisy"]  # before "embed" with --no-imagenet


@pytest.mark.slow
@pytest.mark.parametrize("imagenet", [True, False], ids=["imagenet", "no-imagenet"])
def test_quick_dry_run_end_to_end(tmp_path, imagenet):
    out = tmp_path / "dry"
    flags = [] if imagenet else ["--no-imagenet"]
    proc = run_cli("dry-run", "--quick", "--out", out, *flags, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    if imagenet:
        assert "cleaning embeddings from ImageNet keras:EfficientNetLite0" in proc.stdout
        assert [s["name"] for s in report["stages"]] == STAGES
        assert report["training"] == "fine-tuned from ImageNet EfficientNetLite0"
        # ImageNet features find the sample's noise images and little else (measured: all 3, nothing more).
        assert report["clean"]["noise"]["recall"] == 1.0 and report["clean"]["noise"]["precision"] >= 0.75
        assert report["train"]["val_top1"] >= 0.5  # measured 0.857
    else:
        assert "short first training on the noisy data" in proc.stdout
        assert [s["name"] for s in report["stages"]] == STAGES[:2] + SELF_CLEANING + STAGES[2:]
    assert all(s["seconds"] >= 0 and s["figure"] for s in report["stages"])

    m = report["manifest"]
    assert m["balanced"] and sum(m["written"].values()) + m["removed"] + m["failed"] == m["input"]
    assert m["removed"] == report["clean"]["removed"] == len(pd.read_csv(out / "clean" / "outliers.csv"))
    noise = report["clean"]["noise"]
    assert noise["listed"] > 0 and 0 <= noise["recall"] <= 1
    assert 0 <= report["gap"] <= 1 and 0 <= report["gap_retrieval"] <= 1
    for k in ("val_top1", "val_top10", "val_top100"):
        assert 0 <= report["train"][k] <= 1
    assert report["train"]["val_top1"] <= report["train"]["val_top10"] <= report["train"]["val_top100"]

    solution = pd.read_csv(out / "data" / "solution.csv", dtype=str)
    for name in ("submission.csv", "submission_retrieval.csv"):
        validate_submission(read_submission(out / name), solution["id"].tolist(), source=out / name)

    # Well above chance, for two ways of guessing computed from the sample's own labels: a random training
    # landmark for each test image, and the most frequent training landmark (ties broken at random), both with
    # random confidences. The bar is what guessing exceeds in 1 draw of 100 (about 5x its mean here).
    counts = pd.read_csv(out / "data" / "train.csv")["landmark_id"].value_counts()
    bars = {}
    for name, guess in (("random landmark", counts.index), ("majority landmark", counts.index[counts == counts.max()])):
        expected, samples = chance_gap(read_solution(out / "data" / "solution.csv"), guess)
        assert samples.mean() == pytest.approx(expected, abs=4 * samples.std() / np.sqrt(len(samples)))
        bars[name] = float(np.quantile(samples, 0.99))
        print(f"guessing a {name}: mean GAP {expected:.4f}, 99th percentile {bars[name]:.4f}")
    print(f"GAP {report['gap']:.4f} / {report['gap_retrieval']:.4f} (retrieval)")
    assert min(report["gap"], report["gap_retrieval"]) > max(bars.values())
    md = (out / "report.md").read_text()
    assert f"{report['gap']:.4f}" in md and "plots/images_per_landmark.png" in md
    for line in md.splitlines():
        if line.startswith("- [") and line.endswith(".png)"):
            assert (out / line.split("](", 1)[1][:-1]).is_file()
