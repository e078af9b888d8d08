"""Learning proven on real landmarks: a short fine-tune from ImageNet must beat ImageNet kNN, broken learning must not.

On ``tests/data/oxparis`` (137 training photos of 24 Oxford/Paris landmarks; 46
held-out test photos, 26 of them landmarks), all at IMAGE_SIZE px with
EfficientNet-Lite0 and its offline ImageNet weights, through the library
functions of the CLI (``quality_runs.py``). The reference is the ImageNet
network untrained, answering by cosine kNN-1 over the training photos. Each
fine-tune is ``landmark-kaggle train`` from that start and is scored by
``predict`` with retrieval (the linear rule, classifier and neighbours).

The same check, ``gains``, runs on a sound training and on one broken on
purpose (a learning rate of 1.0, which wrecks the ImageNet start): the sound one
must clear the margins, the broken one must not, so the assertion is shown to
tell learning from its absence. An ArcFace margin of 1.5 was a second control
until it cleared both margins in one run (GAP +0.092, top-1 +0.077; before:
+0.035 / +0.077 and +0.060 / 0): a margin that large still learns, so it is no
control; it is gone, which also saves ~120 s of CI.

Measured (2-core EPYC shared with other jobs, 128 px, 8 epochs, batch 16; ImageNet kNN-1: GAP 0.234,
top-1 0.577), as (GAP gain with the linear rule and retrieval, top-1 gain of the model's own kNN-1):
sound seed 0 +0.138 / +0.077 (a rerun: +0.156 / +0.077), sound seed 1 +0.104 / +0.115; margin 1.5:
+0.035 / +0.077, +0.060 / 0, +0.092 / +0.077; learning rate 1.0: -0.232 / -0.385. Both margins must
hold: a GAP gain of at least 0.07 (sound runs have 0.034 to spare) and at least one more landmark test
image right by kNN-1. Run to run (TensorFlow's CPU kernels are not bit-reproducible across processes) a
gain moves by ~0.03.
Each fine-tune takes 90-110 s on that loaded machine (train 87-111 s, index and predict ~20 s).
"""

from __future__ import annotations

import pytest
import quality_runs as Q
from helpers import built_once, heavy

IMAGE_SIZE = 128
EPOCHS = 8
TRAIN = (f"train.epochs={EPOCHS}", "train.batch_size=16", "train.seed=0")
# The fine-tune must beat ImageNet kNN-1 by at least this much, in GAP (linear rule with retrieval) and in
# top-1 of its own kNN-1 over the 26 landmark test images (one image is 0.0385: at least one more right).
MIN_GAP_GAIN = 0.07
MIN_TOP1_GAIN = 0.03


@pytest.fixture(scope="module")
@heavy
def world(tmp_path_factory):
    """Shards of every training photo and the ImageNet kNN-1 reference, shared by the tests here."""
    import keras

    def build(base):
        keras.utils.set_random_seed(0)
        tfrec = Q.write_shards(Q.OXPARIS, base / "tfrec", IMAGE_SIZE)
        imagenet = Q.imagenet_model(tfrec, base / "imagenet", Q.config(IMAGE_SIZE, TRAIN))
        index, _ = Q.indexes(imagenet, tfrec, Q.OXPARIS / "distractors", base / "imagenet-index")
        ref = Q.evaluate(imagenet, Q.OXPARIS, base / "eval", index=index, overrides=Q.KNN1)
        return {"base": base, "tfrec": tfrec, "ref": ref}
    return built_once(tmp_path_factory, "learning-world", build)


def gains(world, name: str, settings=()) -> tuple[float, float]:
    """(GAP gain, top-1 gain) of a fine-tune with ``settings`` over ImageNet kNN-1: GAP with the linear rule
    and retrieval, top-1 of the fine-tuned embedding's own kNN-1."""
    import keras

    keras.utils.set_random_seed(0)
    base = world["base"] / name
    Q.fine_tune(world["tfrec"], base / "model", Q.config(IMAGE_SIZE, [*TRAIN, *settings]))
    index, _ = Q.indexes(base / "model", world["tfrec"], Q.OXPARIS / "distractors", base / "index")
    got = Q.evaluate(base / "model", Q.OXPARIS, base / "eval", index=index)
    knn = Q.evaluate(base / "model", Q.OXPARIS, base / "eval", index=index, overrides=Q.KNN1)
    ref = world["ref"]
    print(f"{name}: GAP {got['gap']:.4f} vs ImageNet kNN-1 {ref['gap']:.4f}, "
          f"kNN-1 top-1 {knn['top1']:.3f} vs {ref['top1']:.3f}")
    return got["gap"] - ref["gap"], knn["top1"] - ref["top1"]


def learned(gap_gain: float, top1_gain: float) -> bool:
    return gap_gain >= MIN_GAP_GAIN and top1_gain >= MIN_TOP1_GAIN


@pytest.mark.slow
def test_fine_tune_beats_imagenet_knn(world):
    gap_gain, top1_gain = gains(world, "sound")
    assert learned(gap_gain, top1_gain), (gap_gain, top1_gain)


@pytest.mark.slow
def test_absurd_learning_rate_does_not_learn(world):
    gap_gain, top1_gain = gains(world, "lr", ["optim.learning_rate=1.0"])
    assert not learned(gap_gain, top1_gain), (gap_gain, top1_gain)
