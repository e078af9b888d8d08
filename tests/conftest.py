"""Shared pytest setup: quiet TensorFlow, keep Keras on the CPU, a home folder of the session's own, and the
session fixtures several files use.

Each data fixture builds once per test session under pytest's base temp, the heavy ones once for every
xdist worker together (``helpers.built_once``); the builders live in ``helpers.py`` (benchmarks use them
too). ``kaggle_server`` and ``kaggle_env`` put a recording Kaggle API (``kaggle_server.py``) behind the real client.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# The user's home holds state that changes what a test sees: Keras's cache of downloaded weights
# (~/.keras/models: a cached ImageNet file makes "no weights, no network" succeed), keras.json (the backend),
# the kaggle client's credentials. Every test and every process it starts gets an empty home instead, set
# here, before anything imports Keras (it reads KERAS_HOME once, at import).
HOME = tempfile.mkdtemp(prefix="landmark-kaggle-tests-home-")
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
os.environ.update(HOME=HOME, KERAS_HOME=os.path.join(HOME, ".keras"))
for _name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
    os.environ.pop(_name, None)

import kaggle_server as kaggle_api  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    REALDATA,
    built_once,
    ensemble_world,
    heavy,
    inference_world,
    make_shards,
    real_folder,
    run_root,
)


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache (JAX's own, on disk) for every JAX process this run starts.

    The JAX tests train the same small programs again and again (8 devices, then killed and resumed; a kernel
    version, then the next); XLA's CPU compile is ~20 s of each such run. A resumed run loads the program the
    uninterrupted one compiled: the same executable the compiler would build again. Set before any test starts
    its processes; a JAX this process imported already is told too."""
    import sys

    # One cache for all workers: JAX keys each entry by program, backend and version.
    cache = str(run_root(tmp_path_factory) / "jax-compilation-cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_compilation_cache_dir", cache)


@pytest.fixture(scope="session")
def realdata():
    """The 13 real GLDv2 test JPEGs (tests/data); an error, not a skip, when they are missing."""
    files = sorted(REALDATA.glob("*.jpg"))
    assert len(files) == 13, f"expected the 13 real GLDv2 photos in {REALDATA}"
    return files


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """The embedded sample in GLDv2 layout (4 classes, up to 8 images each, 48x64); read-only for tests."""
    from landmark_kaggle.data.sample import make_sample

    root = tmp_path_factory.getbasetemp() / "session_sample"
    make_sample(root, num_classes=4, max_per_class=8, image_size=(48, 64))
    return root


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Tiny train/validation shards of a 4-class sample, written with ``records.encode_example``; one copy for
    every xdist worker (the models trained on them are shared too)."""
    return built_once(tmp_path_factory, "session_shards", make_shards)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """This checkout's wheel (``kernels.build_wheel``), built once, in a folder of its own: the wheel dataset."""
    from landmark_kaggle.kaggle import kernels

    return kernels.build_wheel(tmp_path_factory.getbasetemp() / "session_wheel" / kernels.WHEEL_DATASET)


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory, realdata):
    """A GLDv2 training folder of the real photos, 30 copies each (390 images, 13 classes)."""
    return real_folder(tmp_path_factory.getbasetemp() / "session_real", copies=30, sources=realdata)


@pytest.fixture(scope="session")
@heavy
def world(tmp_path_factory):
    """Sample, shards, a tiny trained model and its retrieval indexes (``helpers.inference_world``)."""
    return built_once(tmp_path_factory, "inference_world", inference_world)


@pytest.fixture(scope="session")
@heavy
def ensemble(tmp_path_factory, world):
    """A second tiny model (40 px) and the two models' indexes, with B (``helpers.ensemble_world``)."""
    return built_once(tmp_path_factory, "ensemble_world", lambda base: ensemble_world(base, world))


def pytest_collection_modifyitems(items):
    """``slow`` = over ~20 s: the tests marked so by their own run time, and every test that needs a ``heavy``
    fixture (a trained model: building it takes longer than the tests that use it)."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        needs = defs.name2fixturedefs.values() if defs else ()
        if any(getattr(d.func, "heavy", False) for chain in needs for d in chain):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def kaggle_server():
    """A fresh recording Kaggle API on 127.0.0.1: (its world, the list of requests it saw)."""
    world = kaggle_api.Kaggle()
    server = kaggle_api.start(world)
    yield world, world.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def kaggle_env(tmp_path, kaggle_server):
    """Environment for the real kaggle client (and our CLI) that sends every request to ``kaggle_server``."""
    world, _ = kaggle_server
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("KAGGLE_", "NO_PROXY", "HTTP"))}
    proxy = f"http://127.0.0.1:{world.port}"
    env.update(KAGGLE_API_ENVIRONMENT="LOCALHOST", HTTP_PROXY=proxy, http_proxy=proxy,
               KAGGLE_USERNAME="alice", KAGGLE_KEY=kaggle_api.SECRET, KAGGLE_CONFIG_DIR=str(tmp_path / "kcfg"),
               HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return env
