"""Model construction options, backbone weights from a local file, the memory estimate and train-embeddings."""

import numpy as np
import pandas as pd
import pytest

from landmark_kaggle.cli import main
from landmark_kaggle.config import config_from_dict
from landmark_kaggle.data.embstore import StoreWriter, open_store
from landmark_kaggle.data.gld import load_train_index
from landmark_kaggle.data.sample import make_sample
from landmark_kaggle.errors import UserError
from landmark_kaggle.model.layers import ArcFaceLoss, CosineClassifier, GeMPooling2D
from landmark_kaggle.model.network import build_backbone, build_model, embedding_model, load_model_dir
from landmark_kaggle.train.embeddings import train_on_embeddings
from landmark_kaggle.train.memory import estimate
from landmark_kaggle.train.optim import compile_model

SMALL = ["data.image_size=32", "model.backbone=MobileNetV3Small"]


def test_options_gem_neck_subcenters_and_dynamic_margins_are_wired():
    cfg = config_from_dict({}, [*SMALL, "model.pooling=gem", "model.gem_p=2.5", "model.embedding_dim=24",
                                "model.subcenters=3", "model.dynamic_margin=true", "model.scale=16"])
    model = build_model(cfg, 5)
    compile_model(model, cfg, [1, 2, 4, 8, 100])
    assert isinstance(model.get_layer("pool"), GeMPooling2D) and model.get_layer("pool").p == 2.5
    assert model.get_layer("embedding").output.shape[-1] == 24
    head = model.get_layer("logits")
    assert isinstance(head, CosineClassifier) and head.kernel.shape == (24, 15) and head.scale == 16
    assert isinstance(model.loss, ArcFaceLoss) and model.loss.scale == 16
    margins = np.array(model.loss.margins)
    assert margins[0] == pytest.approx(0.5) and margins[-1] == pytest.approx(0.05)
    assert np.all(np.diff(margins) < 0)  # the rarer the class, the larger its margin
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    emb = embedding_model(model).predict(images, verbose=0)
    assert emb.shape == (2, 24) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(UserError, match="class counts"):
        compile_model(build_model(cfg, 5), cfg)


def test_backbone_weights_come_from_a_local_file(tmp_path):
    cfg = config_from_dict({}, SMALL)
    source = build_backbone(cfg)
    path = tmp_path / "mobilenet_notop.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(config_from_dict({}, [*SMALL, f"model.weights={path}"]))
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="no such file"):
        build_backbone(config_from_dict({}, [*SMALL, "model.weights=/nope/w.h5"]))
    # Offline (here, CI, the competition kernel) "imagenet" fails at once and says which file to give.
    with pytest.raises(UserError, match=r"model.weights=/path/to/efficientnetv2s_notop.h5"):
        build_backbone(config_from_dict({}, ["data.image_size=32", "model.weights=imagenet"]))
    with pytest.raises(UserError, match="nor a keras.applications model"):
        build_backbone(config_from_dict({}, ["model.backbone=ResNet9000"]))


def test_estimate_matches_hand_arithmetic():
    cfg = config_from_dict({}, ["data.image_size=64"])
    prof = (20_331_360, 1280, 1_000_000)
    est = estimate(cfg, 81313, 16, precision="mixed_bfloat16", profile=prof)
    assert est["classifier_params"] == 81313 * 1280 and est["classifier_fp32_bytes"] == 416_322_560
    assert est["params"] == 20_331_360 + 81313 * 1280
    assert est["total_bytes"] == est["params"] * 16 + 16 * (1_000_000 * 2 + 81313 * 4 * 3)
    neck = estimate(config_from_dict({}, ["model.embedding_dim=512"]), 81313, 1, profile=prof)
    assert neck["classifier_params"] == 512 * 81313 and neck["neck_params"] == 1280 * 512 + 4 * 512


def test_train_estimate_command_prints_the_classifier_size(capsys):
    # EfficientNetV2B0 has the same 1280-wide features as V2-S and builds faster at five image sizes.
    assert main(["train", "--estimate", "--classes", "81313", "--set", "train.batch_size=128",
                 "--replicas", "8", "--set", "data.image_size=384", "--set", "model.backbone=EfficientNetV2B0"]) == 0
    out = capsys.readouterr().out
    assert "104,080,640 parameters (81,313 classes) = 416 MB fp32" in out
    assert "per replica at batch 16, 384 px" in out and "TPU v5e core, 16 GiB" in out and "T4, 15 GiB" in out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A sample folder and a store of class-clustered vectors, with one id unlabelled, one missing, one NaN."""
    root = tmp_path_factory.mktemp("emb")
    make_sample(root / "gld", num_classes=4, max_per_class=30, image_size=(32, 40), noise_fraction=0.0)
    frame = load_train_index(root / "gld").frame
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    ids = np.concatenate([frame["id"].to_numpy()[1:], ["ffffffffffffff00"]])
    labels = np.concatenate([frame["label"].to_numpy()[1:], [0]])
    vectors = centres[labels] + 0.3 * rng.normal(size=(len(ids), 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[0] = np.nan
    writer = StoreWriter(root / "store", ids, {"backend": "test"}, dim=32, chunk_size=16)
    for k in range(writer.num_chunks):
        writer.write_chunk(k, vectors[writer.chunk_rows(k)])
    writer.finalize()
    return root, len(frame)


def test_train_embeddings_learns_clustered_vectors_and_counts_what_it_skips(embedded):
    root, n = embedded
    cfg = config_from_dict({}, ["train.epochs=12", "train.batch_size=16", "optim.warmup_epochs=0",
                                "optim.learning_rate=0.01", "model.embedding_dim=32", "model.dropout=0"])
    s = train_on_embeddings(root / "store", root / "gld", root / "model", cfg, val_fraction=0.2, progress=False)
    assert (s["store_rows_without_label"], s["images_without_vector"], s["unreadable_rows"]) == (1, 1, 1)
    assert s["trained_on"] + s["validated_on"] == n - 2 and s["validated_on"] > 0
    history = pd.read_csv(root / "model" / "history.csv")
    assert len(history) == 12 and history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    assert history["val_top1"].iloc[-1] >= 0.9
    bundle = load_model_dir(root / "model")
    assert bundle.model.input_shape == (None, 32) and len(bundle.label_map) == 4
    store = open_store(root / "store")
    logits = bundle.model.predict(np.asarray(store.matrix[1:9], np.float32), verbose=0)
    assert logits.dtype == np.float32 and logits.shape == (8, 4)
    for name in ("lr", "loss", "topk"):
        assert (root / "model" / "plots" / f"{name}.png").stat().st_size > 1000
