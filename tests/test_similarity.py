"""tfrec-builder similarity: the poster's Table 1 on real GLDv2 test images, as a table and as JSON."""

import json
from itertools import combinations

import numpy as np
import pytest
from helpers import REALDATA

from tfrec_builder import cli
from tfrec_builder.backends import build_backend, l2_normalize
from tfrec_builder.similarity import load_images, pair_names, similarity_table

REAL = sorted(REALDATA.glob("*.jpg"))[:3]
APP = "keras:MobileNetV3Small"


def test_pair_names_follow_the_poster():
    assert pair_names(3) == ["I1-I2", "I1-I3", "I2-I3"]
    assert len(pair_names(5)) == 10


def test_table_values_are_the_cosines_of_the_backend_embeddings():
    assert len(REAL) == 3
    paths = [str(p) for p in REAL]
    result = similarity_table(paths + [paths[0]], [APP], weights="none", image_size=32)
    sims = result["backends"][APP]
    emb = l2_normalize(build_backend(APP, "none", 32).embed(load_images(paths)))
    for (i, j), name in zip(combinations(range(3), 2), ["I1-I2", "I1-I3", "I2-I3"], strict=True):
        assert sims[name] == pytest.approx(float(emb[i] @ emb[j]), abs=1e-5)
    assert sims["I1-I4"] == pytest.approx(1.0, abs=1e-5)  # an image against itself


def test_cli_prints_a_table_and_json(capsys, tmp_path):
    paths = [str(p) for p in REAL]
    args = ["similarity", *paths, "--backend", APP, "--backend", f"avg:{APP}+{APP}", "--weights", "none",
            "--image-size", "32"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"I1 = {paths[0]}" and lines[3].split() == ["Backend", "I1-I2", "I1-I3", "I2-I3"]
    single, avg = lines[4].split(), lines[5].split()
    assert single[0] == APP and avg[0] == f"avg:{APP}+{APP}" and single[1:] == avg[1:]
    assert cli.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == ["I1-I2", "I1-I3", "I2-I3"] and set(out["backends"]) == {APP, f"avg:{APP}+{APP}"}
    assert np.allclose([float(v) for v in single[1:]], list(out["backends"][APP].values()), atol=1e-3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    assert cli.main(["similarity", paths[0], str(bad), "--backend", APP, "--weights", "none"]) == 2
    assert f"{bad}: not a decodable image" in capsys.readouterr().err
