"""Flip TTA and ensembles of model folders (``ensemble.py``), and the indexes they build and must match.

Models: the ``world`` fixture's tiny EfficientNetV2-B0 (32 px) and the
``ensemble`` fixture's second one (another seed, 40 px), with the pair's
indexes of the training shards and of the non-landmark views.
"""

import json
import shutil

import numpy as np
import pytest


def _test_batch(world, data_cfg, n=6):
    from landmark_kaggle.data.pipeline import image_folder_dataset, list_images

    ids, files, _ = list_images(world["root"] / "test")
    ds = image_folder_dataset(ids[:n], files[:n], data_cfg)
    # Sorted by id: the dataset does not keep order.
    pairs = sorted(ds.as_numpy_iterator(), key=lambda p: p[0])
    views = [p[1] for p in pairs]
    return tuple(np.stack(v) for v in zip(*views, strict=True)) if isinstance(views[0], tuple) else np.stack(views)


def test_flip_tta_is_the_mean_of_an_image_and_its_mirror(world):
    from landmark_kaggle.infer.ensemble import load_embedder
    from landmark_kaggle.model.network import embedding_model, load_model_dir

    flip = load_embedder(world["model"], ["inference.tta=flip"])
    x = _test_batch(world, flip.data_cfg)
    # The oracle: the saved Keras model itself, on the images and on their mirrors.
    bundle = load_model_dir(world["model"])
    scale, emb_model = bundle.config.model.scale, embedding_model(bundle.model)
    cos = (bundle.model.predict(x, verbose=0) + bundle.model.predict(x[:, :, ::-1], verbose=0)) / (2 * scale)
    emb = emb_model.predict(x, verbose=0) + emb_model.predict(x[:, :, ::-1], verbose=0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got_cos, got_emb = flip.embed(x)
    np.testing.assert_allclose(got_cos, cos, atol=1e-5)
    np.testing.assert_allclose(got_emb, emb, atol=1e-5)
    plain_cos, _ = load_embedder(world["model"]).embed(x)
    assert np.abs(plain_cos - got_cos).max() > 1e-3  # the sample's views are not mirror-symmetric


def test_an_ensemble_concatenates_unit_embeddings_and_averages_cosines(world, ensemble):
    from landmark_kaggle.infer.ensemble import load_embedder

    a, b = load_embedder(world["model"]), load_embedder(ensemble["model_b"])
    pair = load_embedder([world["model"], ensemble["model_b"]])
    assert [v.image_size for v in pair.views] == [64, 40] and pair.dim == a.dim + b.dim
    va, vb = _test_batch(world, pair.data_cfg)
    cos, emb = pair.embed((va, vb))
    cos_a, emb_a = a.embed(va)
    cos_b, emb_b = b.embed(vb)
    np.testing.assert_allclose(cos, (cos_a + cos_b) / 2, atol=1e-6)
    np.testing.assert_allclose(emb, np.concatenate([emb_a, emb_b], axis=1) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # So the cosine between two images under the ensemble is the mean of the two models' cosines.
    np.testing.assert_allclose(emb @ emb.T, (emb_a @ emb_a.T + emb_b @ emb_b.T) / 2, atol=1e-5)


def test_members_must_share_one_label_map_and_differ(world, tmp_path):
    import pandas as pd

    from landmark_kaggle.errors import UserError
    from landmark_kaggle.infer.ensemble import load_embedder

    other = tmp_path / "other"
    shutil.copytree(world["model"], other)
    lm = pd.read_csv(other / "label_map.csv")
    lm["landmark_id"] += 1000
    lm.to_csv(other / "label_map.csv", index=False)
    with pytest.raises(UserError, match="label_map.csv differs.*one shared label map"):
        load_embedder([world["model"], other])
    with pytest.raises(UserError, match="given twice"):
        load_embedder([world["model"], world["model"]])


def test_an_index_of_another_ensemble_or_order_is_refused(world, ensemble, tmp_path):
    from landmark_kaggle.data.embstore import StoreError
    from landmark_kaggle.infer.predict import predict

    pair, test = [world["model"], ensemble["model_b"]], world["root"] / "test"
    with pytest.raises(StoreError, match=r"made by 1 model\(s\).*given 2.*same --model list"):
        predict(pair, tmp_path / "s.csv", images=test, index=world["index"])
    with pytest.raises(StoreError, match=r"made by 2 model\(s\).*given 1"):
        predict(world["model"], tmp_path / "s.csv", images=test, index=ensemble["index"])
    # Same widths (32 + 32), other order: member 1's probe is model B's, not A's.
    with pytest.raises(StoreError, match="probe embedding differs from member 1 "):
        predict(pair[::-1], tmp_path / "s.csv", images=test, index=ensemble["index"])
    assert not (tmp_path / "s.csv").exists()


def test_embed_index_stores_b_against_the_nonlandmarks(ensemble):
    index, dis = ensemble["index"], ensemble["distractors"]
    b = np.load(index / "nonlandmark_sim.npy")
    rows = np.load(index / "matrix.npy").astype(np.float32)
    nonlandmarks = np.load(dis / "matrix.npy").astype(np.float32)
    # B by its definition: each row's mean similarity to its 5 nearest non-landmarks.
    want = -np.sort(-(rows @ nonlandmarks.T), axis=1)[:, :5].mean(axis=1)
    np.testing.assert_allclose(b, want, atol=1e-5)
    info = json.loads((index / "index.json").read_text())
    dis_meta = json.loads((dis / "meta.json").read_text())
    assert info["nonlandmarks"]["ids_sha256"] == dis_meta["ids_sha256"] and info["nonlandmarks"]["rows"] == 24
    assert [m["dim"] for m in info["members"]] == [32, 32] and info["tta"] == "flip"
