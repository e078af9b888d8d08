"""tfrec-builder embed: Keras and avg backends on CPU with random weights, resume, bad images, weights files."""

import json
import os
import pwd
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landmark_kaggle.data.embstore import StoreError, open_store, probe_image
from landmark_kaggle.data.gld import image_path
from tfrec_builder import cli
from tfrec_builder.backends import BackendError, build_backend, l2_normalize, resize_square
from tfrec_builder.embed import embed_dataset, read_image

APP = "keras:MobileNetV3Small"  # the cheapest keras.applications model that takes 32 px inputs
SIZE = 32


@pytest.fixture(scope="module")
def backend():
    return build_backend(APP, "none", SIZE)


def _images(root, ids):
    return [read_image(str(image_path(root, "train", i)))[0] for i in ids]


def _embed(sample, out, backend, **kw):
    return embed_dataset(sample, out, backend, chunk_size=8, batch_size=4, progress=False, **kw)


def test_store_holds_what_the_backend_computes(sample, backend, tmp_path):
    store = open_store(_embed(sample, tmp_path / "s", backend))
    train = pd.read_csv(sample / "train.csv", dtype={"id": str})
    assert list(store.ids) == train["id"].tolist()
    assert store.matrix.shape == (len(train), backend.dim) and np.isfinite(store.matrix).all()
    assert store.meta["backend"] == APP and store.meta["image_size"] == SIZE
    assert store.meta["weights_sha256"] == "random:seed0" and store.meta["complete"] is True
    assert store.meta["l2_normalized"] is True
    direct = l2_normalize(backend.embed(_images(sample, train["id"][:3])))
    np.testing.assert_allclose(store.matrix[:3].astype(np.float32), direct, rtol=0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(store.matrix.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(store.probe(), l2_normalize(backend.embed([probe_image()]))[0], atol=1e-5)


def test_random_weights_are_reproducible_and_avg_of_itself_is_itself(sample, backend):
    images = _images(sample, pd.read_csv(sample / "train.csv", dtype={"id": str})["id"][:4])
    again = build_backend(APP, "none", SIZE)
    np.testing.assert_array_equal(again.embed(images), backend.embed(images))
    avg = build_backend(f"avg:{APP}+{APP}", "none", SIZE)
    assert avg.dim == backend.dim and avg.name == f"avg:{APP}+{APP}"
    np.testing.assert_allclose(avg.embed(images), l2_normalize(backend.embed(images)), rtol=1e-5, atol=1e-6)
    assert np.abs(l2_normalize(backend.embed(images[:1])) - l2_normalize(backend.embed(images[1:2]))).max() > 1e-2


def test_avg_of_two_different_backends_is_the_mean_of_their_unit_embeddings(sample, tmp_path):
    a_spec, b_spec = "keras:MobileNetV2", "keras:EfficientNetB0"  # 1280-d both; other layers, other preprocessing
    ids = pd.read_csv(sample / "train.csv", dtype={"id": str})["id"]
    images = _images(sample, ids[:6])
    # Each part on its own, then the mean of the unit rows written out here, not with the module's helpers.
    a = build_backend(a_spec, "none", SIZE).embed(images).astype(np.float64)
    b = build_backend(b_spec, "none", SIZE).embed(images).astype(np.float64)
    unit_a = a / np.sqrt((a**2).sum(axis=1, keepdims=True))
    unit_b = b / np.sqrt((b**2).sum(axis=1, keepdims=True))
    expected = (unit_a + unit_b) / 2
    # The parts are far apart, and their raw norms differ, so a plain mean (or one part alone) cannot pass.
    assert np.abs(unit_a - unit_b).max() > 0.05
    assert abs(np.log(np.linalg.norm(a, axis=1).mean() / np.linalg.norm(b, axis=1).mean())) > 0.5
    avg = build_backend(f"avg:{a_spec}+{b_spec}", "none", SIZE)
    assert avg.dim == 1280 and avg.name == f"avg:{a_spec}+{b_spec}"
    assert avg.image_size == {a_spec: SIZE, b_spec: SIZE} and avg.weights_sha256 == "random:seed0+random:seed0"
    np.testing.assert_allclose(avg.embed(images), expected, rtol=1e-5, atol=1e-6)
    # The store keeps that mean as a unit row (float16).
    store = open_store(_embed(sample, tmp_path / "s", avg))
    assert store.meta["backend"] == avg.name
    want = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(store.matrix[:6].astype(np.float32), want, rtol=0, atol=2e-3)


def test_an_interrupted_embed_resumes_to_the_same_store(sample, backend, tmp_path):
    ref = open_store(_embed(sample, tmp_path / "ref", backend))
    out = tmp_path / "resumed"
    _embed(sample, out, backend, max_chunks=1)
    with pytest.raises(StoreError, match="incomplete store"):
        open_store(out)
    # What a kill in the middle of chunk 1 leaves behind: rows half written, no marker.
    matrix = np.load(out / "matrix.npy", mmap_mode="r+")
    matrix[8:12] = 7.0
    matrix.flush()
    del matrix
    done = (out / "chunks" / "00000.json").stat().st_mtime_ns
    _embed(sample, out, backend)
    resumed = open_store(out)
    np.testing.assert_array_equal(resumed.matrix, ref.matrix)
    assert (out / "chunks" / "00000.json").stat().st_mtime_ns == done  # finished chunks are kept, not redone
    assert json.loads((out / "meta.json").read_text())["complete"] is True


def test_resume_with_other_weights_and_a_store_that_lies_about_its_backend(sample, backend, tmp_path):
    out = tmp_path / "s"
    _embed(sample, out, backend, max_chunks=1)
    with pytest.raises(StoreError, match="random:seed0"):
        _embed(sample, out, build_backend(APP, "none", SIZE, seed=1))
    # A finished store made with seed 1 whose meta.json claims seed 0.
    liar = tmp_path / "liar"
    _embed(sample, liar, build_backend(APP, "none", SIZE, seed=1))
    meta = json.loads((liar / "meta.json").read_text())
    meta["weights_sha256"] = "random:seed0"
    (liar / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="probe embedding differs"):
        _embed(sample, liar, backend)


def test_unreadable_images_get_nan_rows_and_are_listed(sample, backend, tmp_path):
    data = tmp_path / "data"
    os.system(f"cp -r {sample} {data}")
    ids = pd.read_csv(data / "train.csv", dtype={"id": str})["id"].tolist()
    image_path(data, "train", ids[2]).write_bytes(b"not a jpeg")
    image_path(data, "train", ids[5]).unlink()
    store = open_store(_embed(data, tmp_path / "s", backend))
    assert np.isnan(store.matrix[[2, 5]].astype(np.float32)).all() and np.isfinite(store.matrix[[0, 1, 3]]).all()
    assert store.failed().to_dict("records") == [{"id": ids[2], "reason": "not a decodable image"},
                                                 {"id": ids[5], "reason": "missing file"}]


def test_weights_from_a_local_file(sample, tmp_path):
    import keras

    keras.utils.set_random_seed(5)
    model = keras.applications.MobileNetV3Small(include_top=False, pooling="avg", weights=None,
                                                input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "mobilenet.weights.h5"
    model.save_weights(path)
    loaded = build_backend(f"{APP}@{path}", None, SIZE)
    assert loaded.weights == str(path) and len(loaded.weights_sha256) == 64
    x = np.stack([probe_image(SIZE)]).astype(np.float32)
    got = l2_normalize(loaded.embed([probe_image(SIZE)]))
    np.testing.assert_allclose(got, l2_normalize(model.predict_on_batch(x)), rtol=0, atol=1e-4)
    assert np.abs(got - l2_normalize(build_backend(APP, "none", SIZE).embed([probe_image(SIZE)]))).max() > 1e-2
    with pytest.raises(BackendError, match="weights file .*nope.h5 not found"):
        build_backend(APP, str(tmp_path / "nope.h5"), SIZE)


def test_the_keras_cache_is_the_test_sessions_own():
    # conftest gives the session an empty home: a weights file the user's Keras once cached cannot stand in
    # for the missing network in the test below.
    from keras.src.backend.config import keras_home

    assert Path.home() != Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert Path(keras_home()).is_relative_to(Path.home()) and not (Path(keras_home()) / "models").exists()


def test_no_weights_and_no_network_names_the_file_to_provide(sample, tmp_path, capsys):
    with pytest.raises(BackendError) as err:
        build_backend("keras:EfficientNetB0", None, SIZE)
    message = str(err.value)
    assert "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5" in message
    assert "--weights /path/to/efficientnetb0_notop.h5" in message and "--weights none" in message
    code = cli.main(["embed", "--data", str(sample), "--out", str(tmp_path / "s"), "--backend", "keras:NoSuchNet",
                     "--weights", "none"])
    assert code == 2 and "not a keras.applications model" in capsys.readouterr().err


def test_model_folder_backend_self_cleans(sample, tmp_path):
    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.data.gld import load_train_index
    from landmark_kaggle.data.pipeline import eval_transform
    from landmark_kaggle.model.network import build_model, embedding_model, save_model_dir
    from tfrec_builder.clean import clean_dataset

    index = load_train_index(sample)
    cfg = config_from_dict({"data": {"image_size": SIZE}, "model": {"backbone": "MobileNetV3Small",
                                                                    "embedding_dim": 16}})
    model = build_model(cfg, index.num_classes)
    folder = save_model_dir(model, cfg, index.label_map, tmp_path / "model")
    store = open_store(_embed(sample, tmp_path / "s", f"model:{folder}"))
    assert store.meta["backend"] == f"model:{folder}" and store.dim == 16 and store.meta["image_size"] == SIZE
    # The store holds the model's own embedding of the eval-path image.
    image = _images(sample, store.ids[:1])[0]
    direct = embedding_model(model).predict_on_batch(np.asarray(eval_transform(image, cfg.data))[None])
    np.testing.assert_allclose(store.matrix[:1].astype(np.float32), direct, rtol=0, atol=2e-3)
    report = clean_dataset(store.path, sample, tmp_path / "clean", sheets=0, jobs=1, progress=False)
    assert report["images"]["in"] == len(index) and report["settings"]["backend"] == f"model:{folder}"
    assert report["images"]["removed"] + report["images"]["kept"] == len(index)


def test_efficientnet_lite_takes_imagenet_offline_with_no_weights_given(sample, tmp_path):
    from landmark_kaggle.model.efficientnet_lite import EfficientNetLite0, imagenet_weights_file

    lite = build_backend("keras:EfficientNetLite0", None, 64)
    cached = imagenet_weights_file("EfficientNetLite0", include_top=False)
    assert lite.weights == str(cached) and len(lite.weights_sha256) == 64 and lite.dim == 1280
    images = _images(sample, pd.read_csv(sample / "train.csv", dtype={"id": str})["id"][:3])
    # The backend feeds 0..255 pixels: the network's own (x - 127) / 128 is the only preprocessing.
    net = EfficientNetLite0(include_top=False, pooling="avg", input_shape=(64, 64, 3))
    x = np.stack([resize_square(im, 64) for im in images]).astype(np.float32)
    np.testing.assert_allclose(lite.embed(images), net.predict_on_batch(x), rtol=0, atol=1e-4)
    random = build_backend("keras:EfficientNetLite0", "none", 64)
    assert random.weights_sha256 == "random:seed0"
    assert np.abs(l2_normalize(random.embed(images)) - l2_normalize(lite.embed(images))).max() > 1e-2
