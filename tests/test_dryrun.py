"""dry-run --quick end to end: every stage runs, the report's figures are sane, the submission is valid, and
its GAP beats guessing on the same sample."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

from landmark_kaggle.evaluate.metrics import global_average_precision
from landmark_kaggle.evaluate.submission import read_solution, read_submission, solution_truth, validate_submission


def chance_gap(solution: pd.DataFrame, classes, draws: int = 20000, seed: int = 0) -> tuple[float, np.ndarray]:
    """GAP of guessing: every test image gets a landmark drawn uniformly from ``classes`` and a uniform random
    confidence. Returns the exact expectation and ``draws`` seeded samples.

    Random confidences rank the N images in a uniformly random order. Image i is right with probability
    q_i (the share of ``classes`` among its landmarks; 0 for a non-landmark image), independently of the
    others, and given it sits at rank k and is right, the k - 1 images above it hold on average
    (k - 1)(Q - q_i)/(N - 1) right ones (Q = sum of q). With precision hits/k at each right rank:
    E[GAP] = 1/M * sum_k 1/k * 1/N * sum_i q_i (1 + (k - 1)(Q - q_i)/(N - 1)).
    """
    truth = solution_truth(solution)
    classes = np.asarray(sorted(set(int(c) for c in classes)))
    n, m = len(truth.ids), truth.num_landmark_images
    landmarks = dict(zip(solution["id"], solution["landmarks"], strict=True))
    q = np.array([len(set(landmarks[i]) & set(classes.tolist())) / len(classes) for i in truth.ids])
    k = np.arange(1, n + 1)
    expected = float(sum((q * (1 + (kk - 1) * (q.sum() - q) / (n - 1))).sum() / (n * kk) for kk in k) / m)
    rng = np.random.default_rng(seed)
    ids = list(truth.ids)
    samples = np.array([global_average_precision(ids, rng.choice(classes, n), rng.random(n), truth)
                        for _ in range(draws)])
    return expected, samples


STAGES = ["sample", "stats", "write noisy", "train noisy", "embed", "clean", "write", "verify", "train",
          "embed-index", "predict", "predict+retrieval", "score"]


@pytest.mark.slow
def test_quick_dry_run_end_to_end(tmp_path):
    out = tmp_path / "dry"
    proc = run_cli("dry-run", "--quick", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "short first training on the noisy data" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == STAGES
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
