"""Inference split over two devices gives what one device gives (issue 22: "Two GPUs when there are two").

``predict``, ``embed-index`` and ``tfrec-builder embed`` run through their real
command lines twice in fresh processes (logical devices are fixed when
TensorFlow starts): with ``LANDMARK_INFER_DEVICES=1`` and with ``cpu:2``, two
logical CPU devices standing in for Kaggle's T4 ×2 (``model.replicas``). Batch
sizes are chosen so batches split unevenly and the last batch is short: a
dropped, repeated or swapped slice changes some id's row, which is compared
id by id. Rows are equal to float tolerance, not bit for bit: each device runs
a smaller batch, and the CPU kernels may sum in another order for another
batch size (nothing is reduced across devices).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import built_once

from landmark_kaggle.errors import UserError

# One process per device setting runs all three commands; it reports how many devices inference used.
SCRIPT = textwrap.dedent("""
    import json, sys
    from landmark_kaggle.cli import main
    from landmark_kaggle.model.replicas import replicas
    from tfrec_builder.cli import main as builder

    w, out = json.loads(sys.argv[1]), sys.argv[2]
    assert main(["predict", "--model", w["model"], "--images", w["root"] + "/test", "--index", w["index"],
                 "--set", "inference.batch_size=7", "--out", out + "/submission.csv"]) == 0
    assert main(["embed-index", "--model", w["model"], "--data", w["tfrec"], "--batch-size", "6",
                 "--out", out + "/index"]) == 0
    assert builder(["embed", "--data", w["root"], "--out", out + "/store", "--backend", "model:" + w["model"],
                    "--batch-size", "7", "--workers", "1"]) == 0
    print(json.dumps({"devices": replicas().count}))
""")


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """{devices setting: (output folder, devices inference used)} for one device and two."""
    paths = json.dumps({k: str(v) for k, v in world.items()})

    def run_both(base):
        result = {}
        for spec in ("1", "cpu:2"):
            out = base / spec.replace(":", "")
            out.mkdir()
            env = {**os.environ, "LANDMARK_INFER_DEVICES": spec, "CUDA_VISIBLE_DEVICES": ""}
            proc = subprocess.run([sys.executable, "-c", SCRIPT, paths, str(out)], env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            result[spec] = (out, json.loads(proc.stdout.strip().splitlines()[-1])["devices"])
        return result
    result = built_once(tmp_path_factory, "infer-devices", run_both)
    assert result["1"][1] == 1 and result["cpu:2"][1] == 2, "the runs did not use one and two devices"
    return result


def _store(path):
    from landmark_kaggle.data.embstore import open_store

    store = open_store(path)
    return store.ids.astype(str), np.asarray(store.matrix, np.float32)


def test_predict_on_two_devices_equals_one(runs, world):
    from landmark_kaggle.evaluate.submission import read_submission

    one, two = (read_submission(runs[s][0] / "submission.csv") for s in ("1", "cpu:2"))
    # 24 test images in batches of 7: the last batch (3) splits 2 + 1, with a filler row.
    assert len(one) == len(list((world["root"] / "test").rglob("*.jpg"))) == 24
    assert one["id"].tolist() == two["id"].tolist()
    assert (one["landmark_id"] >= 0).all()
    assert one["landmark_id"].tolist() == two["landmark_id"].tolist()
    np.testing.assert_allclose(two["confidence"].to_numpy(), one["confidence"].to_numpy(), rtol=0, atol=1e-5)


def test_embed_index_on_two_devices_equals_one(runs):
    ids_one, one = _store(runs["1"][0] / "index")
    ids_two, two = _store(runs["cpu:2"][0] / "index")
    assert len(ids_one) > 40 and ids_one.tolist() == ids_two.tolist()
    assert np.isfinite(one).all()
    # Stored as float16: one rounding step of a unit vector's entries is at most 2**-11.
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-3)


def test_tfrec_builder_embed_on_two_devices_equals_one(runs, world):
    ids_one, one = _store(runs["1"][0] / "store")
    ids_two, two = _store(runs["cpu:2"][0] / "store")
    listed = pd.read_csv(world["root"] / "train.csv", dtype=str)["id"]
    assert ids_one.tolist() == ids_two.tolist() and sorted(ids_one) == sorted(listed)
    assert np.isfinite(one).all()
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-3)


def test_a_bad_device_setting_is_refused_by_name(monkeypatch):
    from landmark_kaggle.model import replicas as R

    for bad in ("gpu:2", "cpu:0", "two"):
        with pytest.raises(UserError, match="LANDMARK_INFER_DEVICES"):
            R.parse_spec(bad)
    assert R.parse_spec("auto") == ("auto", None) and R.parse_spec("cpu:2") == ("cpu", 2)


def test_logical_devices_asked_for_too_late_say_so():
    import tensorflow as tf

    from landmark_kaggle.model.replicas import _split_cpu

    tf.config.list_logical_devices("CPU")  # TensorFlow has set up its devices in this process now
    with pytest.raises(UserError, match="before the process starts"):
        _split_cpu(3)
