"""The mmseg: backend: real mmsegmentation networks built from the packaged configs, random weights, CPU."""

import numpy as np
import pytest
import torch

from landmark_kaggle.data.embstore import open_store, probe_image
from landmark_kaggle.data.sample import make_sample
from tfrec_builder.backends import BackendError, build_backend, l2_normalize, resize_square
from tfrec_builder.embed import embed_dataset
from tfrec_builder.mmseg_backend import find_config

# DeepLabV3+ as in the poster's Table 1, on the lightest backbone the package ships (ResNet-18).
LIGHT = "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024"
POSTER = ["knet-s3_swin-l_upernet_8xb2-adamw-80k_ade20k-512x512", "deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512",
          "knet-s3_r50-d8_deeplabv3_8xb2-adamw-80k_ade20k-512x512"]
SIZE = 64


@pytest.fixture(scope="module")
def light():
    return build_backend(f"mmseg:{LIGHT}", "none", SIZE)


def test_embedding_is_the_pooled_input_of_the_decode_heads_classifier(light):
    images = [probe_image(96), probe_image(80)[::-1].copy()]
    emb = light.embed(images)
    assert emb.shape == (2, 128) and light.dim == 128 and np.isfinite(emb).all()
    # conv_seg is a 1x1 convolution, so pooling commutes with it: the pooled logits of the
    # decode head equal conv_seg applied to our pooled feature.
    model = light.model
    with torch.no_grad():
        tensors = [torch.from_numpy(np.ascontiguousarray(resize_square(im, SIZE)[..., ::-1])).permute(2, 0, 1)
                   for im in images]
        data = model.data_preprocessor({"inputs": tensors, "data_samples": None}, False)
        logits = model.decode_head(model.extract_feat(data["inputs"])).mean(dim=(2, 3)).numpy()
    conv = light.head.conv_seg
    expected = emb @ conv.weight.detach().numpy()[:, :, 0, 0].T + conv.bias.detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_random_weights_are_seeded_and_avg_of_itself_is_itself(light):
    images = [probe_image(70), probe_image(90)]
    np.testing.assert_allclose(build_backend(f"mmseg:{LIGHT}", "none", SIZE).embed(images), light.embed(images),
                               rtol=1e-5, atol=1e-6)
    avg = build_backend(f"avg:mmseg:{LIGHT}+mmseg:{LIGHT}", "none", SIZE)
    np.testing.assert_allclose(avg.embed(images), l2_normalize(light.embed(images)), rtol=1e-5, atol=1e-6)


def test_embed_a_sample_with_mmseg(light, tmp_path):
    make_sample(tmp_path / "data", num_classes=3, max_per_class=4, image_size=(48, 64))
    store = open_store(embed_dataset(tmp_path / "data", tmp_path / "s", light, chunk_size=4, batch_size=4,
                                     progress=False))
    assert store.meta["backend"] == f"mmseg:{LIGHT}" and store.meta["weights_sha256"] == "random:seed0"
    assert store.meta["image_size"] == SIZE and store.matrix.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(store.matrix.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_knet_upernet_builds_and_embeds():
    knet = build_backend("mmseg:knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512", "none", SIZE)
    assert type(knet.model.decode_head).__name__ == "IterativeDecodeHead" and knet.dim == 512
    emb = knet.embed([probe_image(64)])
    assert emb.shape == (1, 512) and np.isfinite(emb).all() and np.abs(emb).max() > 0


def test_config_names_and_clear_errors():
    for name in POSTER:
        assert find_config(name).name == f"{name}.py"
    with pytest.raises(BackendError, match="did you mean deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024"):
        find_config("deeplabv3plus_r18-d8_4xb2-80k_cityscape-512x1024")
    with pytest.raises(BackendError, match="metafile.yaml.*--weights none"):
        build_backend(f"mmseg:{LIGHT}", None, SIZE)
