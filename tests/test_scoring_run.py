"""A scoring run that always finishes: the competition's train set cut to the time left and to
``inference.competition_max_images`` (every landmark kept), test images answered first, non-finite
confidences as empty rows, and an index embedded with another TTA mode refused."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import chance_bar

from landmark_kaggle.config import InferenceConfig
from landmark_kaggle.infer.competition import priority_order
from landmark_kaggle.infer.predict import competition_budget


def test_priority_order_takes_every_landmark_before_any_second_image():
    # Landmarks 7 (rows 0, 3, 5), 2 (rows 1, 4), 9 (row 2).
    lids = np.array([7, 2, 9, 7, 2, 7])
    order = priority_order(lids)
    assert sorted(order.tolist()) == list(range(6))
    # Round 1: the first image of each landmark (rows 0, 1, 2 in some fixed order); round 2: rows 3 and 4;
    # round 3: row 5. Within a landmark, file order.
    assert sorted(order[:3].tolist()) == [0, 1, 2] and sorted(order[3:5].tolist()) == [3, 4] and order[5] == 5
    assert np.array_equal(order, priority_order(lids))  # fixed: a resumed run gets the same prefix
    rng = np.random.default_rng(0)
    big = rng.integers(0, 50, 2000)
    order = priority_order(big)
    for n in (50, 120, 777):
        kept = big[order[:n]]
        counts = np.bincount(kept, minlength=50)
        assert len(np.unique(kept)) == len(np.unique(big))  # every landmark
        have = np.bincount(big, minlength=50)
        # Balanced: no landmark gets a k-th image while another with more to give has fewer than k - 1.
        assert counts.max() - counts[have > counts].min(initial=counts.max()) <= 1


def test_competition_budget_by_hand():
    inf = InferenceConfig(time_limit=1.0)
    # 1 h = 3600 s, 600 s spent: 3000 s left, 90% of it at 10 images/s = 27,000 images, less 500 test images.
    assert competition_budget(inf, 10.0, 600.0, 500) == 26500
    assert competition_budget(inf, 10.0, 3600.0, 500) == 0  # no time left: nothing, never negative


def _ids(world):
    return pd.read_csv(world["root"] / "sample_submission.csv", dtype=str)["id"].tolist()


def _check(world, out, summary):
    """Every id written, every readable image answered, GAP above what guessing reaches."""
    from landmark_kaggle.evaluate.submission import read_solution, read_submission, score, validate_submission

    sub = read_submission(out)
    validate_submission(sub, _ids(world), source=out)
    assert summary["no_prediction"] == 0 and summary["unreadable"] == 0
    gap = score(read_solution(world["root"] / "solution.csv"), sub)["gap"]
    bar = chance_bar(world["root"] / "solution.csv", world["root"] / "train.csv")
    assert gap > bar, f"GAP {gap:.4f} not above the chance bar {bar:.4f}"
    return gap


def test_a_tiny_time_limit_still_writes_every_id(world, tmp_path, capsys):
    from landmark_kaggle.infer.predict import predict

    out = tmp_path / "submission.csv"
    summary = predict(world["model"], out, images=world["root"] / "test",
                      ids_csv=world["root"] / "sample_submission.csv", competition=world["root"],
                      competition_index=tmp_path / "ci",
                      overrides=["inference.index_from=competition", "inference.time_limit=1e-6"])
    listed = len(pd.read_csv(world["root"] / "train.csv"))
    assert summary["competition_index"]["embedded"] == 0 and summary["competition_index"]["listed"] == listed
    assert summary["competition_index"]["budget"] == 0 and not summary["retrieval"]
    assert f"0 of {listed} images embedded" in capsys.readouterr().out
    assert any("first pass" in n for n in summary["notes"])
    _check(world, out, summary)


def test_a_train_set_above_the_cap_is_cut_per_landmark(world, tmp_path, capsys):
    from landmark_kaggle.infer.predict import predict
    from landmark_kaggle.infer.retrieval import RetrievalIndex

    train = pd.read_csv(world["root"] / "train.csv", dtype={"id": str})
    landmarks = train["landmark_id"].nunique()
    out = tmp_path / "submission.csv"
    cap = 4 * landmarks + 1  # below the train set's size: a cut that must still keep every landmark
    assert cap < len(train)
    summary = predict(world["model"], out, images=world["root"] / "test",
                      ids_csv=world["root"] / "sample_submission.csv", competition=world["root"],
                      competition_index=tmp_path / "ci",
                      overrides=["inference.index_from=competition", "inference.restrict_to_competition_train=true",
                                 f"inference.competition_max_images={cap}"])
    built = RetrievalIndex(tmp_path / "ci")
    assert len(built) == cap and len(set(built.landmark_ids.tolist())) == landmarks
    assert set(built.ids.tolist()) <= set(train["id"])
    info = summary["competition_index"]
    assert (info["embedded"], info["landmarks"], info["listed_landmarks"]) == (cap, landmarks, landmarks)
    assert f"{cap} of {len(train)} images embedded ({landmarks} of {landmarks} landmarks), cut by " \
           f"inference.competition_max_images = {cap}" in capsys.readouterr().out
    assert summary["retrieval"] and summary["index_rows"] == cap
    _check(world, out, summary)


def test_a_non_finite_confidence_is_an_empty_row_not_an_exception(world, tmp_path, capsys):
    from landmark_kaggle.evaluate.submission import read_submission, validate_submission
    from landmark_kaggle.infer.predict import predict
    from landmark_kaggle.model.network import LOGITS_LAYER, load_model_dir, save_model_dir

    # One class's weights NaN: its cos θ is NaN for every image, and the classifier's top "class" with it.
    bundle = load_model_dir(world["model"])
    layer = bundle.model.get_layer(LOGITS_LAYER)
    weights = [w.copy() for w in layer.get_weights()]
    weights[0][..., 0] = np.nan
    layer.set_weights(weights)
    broken = save_model_dir(bundle.model, bundle.config, bundle.label_map, tmp_path / "model")
    out = tmp_path / "submission.csv"
    summary = predict(broken, out, images=world["root"] / "test")
    n = summary["images"]
    assert summary["nonfinite_confidence"] == n and summary["no_prediction"] == n and summary["unreadable"] == 0
    sub = read_submission(out)
    validate_submission(sub, sorted(p.stem for p in (world["root"] / "test").rglob("*.jpg")), source=out)
    assert (sub["landmark_id"] < 0).all()
    assert f"{n} image(s) got a non-finite confidence" in capsys.readouterr().out
    # glr2020_1st never reads the classifier: the same model answers every image through the index.
    summary = predict(broken, out, images=world["root"] / "test", index=world["index"],
                      distractors=world["distractors"], competition=world["root"], competition_index=tmp_path / "ci",
                      overrides=["inference.scoring=glr2020_1st", "inference.index_from=competition"])
    assert summary["nonfinite_confidence"] == 0 and summary["no_prediction"] == 0
    assert json.loads(out.with_name("submission.predict.json").read_text())["inference"]["scoring"] == "glr2020_1st"


def test_an_index_embedded_with_another_tta_mode_is_refused(world, tmp_path):
    from landmark_kaggle.data.embstore import StoreError
    from landmark_kaggle.infer.predict import predict

    with pytest.raises(StoreError, match=r"embedded with inference.tta=none, but the queries are embedded with "
                                         r"inference.tta=flip"):
        predict(world["model"], tmp_path / "s.csv", images=world["root"] / "test", index=world["index"],
                overrides=["inference.tta=flip"])
    assert not (tmp_path / "s.csv").exists()
