"""What several test files (and the benchmarks) build: tiny GLDv2 folders, shards, a trained model, references.

Pytest puts this folder on ``sys.path`` (rootdir-relative test modules), so tests
``import helpers``; the benchmarks add it themselves. Session-scoped fixtures
over these live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

# The real photos ship inside the repository (tests/data/README.md: provenance, licences, what was measured).
DATA = Path(__file__).resolve().parent / "data"
REALDATA = DATA / "gldv2-test-images"
# 217 labelled Oxford/Paris landmark photos in GLDv2 layout with a solution.csv and a distractors/ gallery.
OXPARIS = DATA / "oxparis"
CLI = [sys.executable, "-m", "landmark_kaggle.cli"]
BUILDER_CLI = [sys.executable, "-m", "tfrec_builder.cli"]


def hid(name: str) -> str:
    """A 16-hex id that sorts like ``name`` (hex letters and digits only)."""
    return name.ljust(16, "0")


def loop_gap(ids, lids, confs, solution, ignore_nonlandmark=False) -> float:
    """GAP by its definition, one prediction at a time: the oracle for the vectorised ``metrics`` version.

    Sorted by confidence descending, then image id, then landmark id; a landmark id
    below 0 is no prediction; a non-landmark image predicted is a miss (unless
    ``ignore_nonlandmark``); M counts the images that show a landmark.
    """
    m = sum(1 for landmarks in solution.values() if landmarks)
    preds = sorted(((i, lid, c) for i, lid, c in zip(ids, lids, confs, strict=True) if lid >= 0),
                   key=lambda p: (-p[2], p[0], p[1]))
    total, hits, rank = 0.0, 0, 0
    for image, lid, _ in preds:
        if ignore_nonlandmark and not solution[image]:
            continue
        rank += 1
        if lid in solution[image]:
            hits += 1
            total += hits / rank
    return total / m


def chance_gap(solution: pd.DataFrame, classes, draws: int = 20000, seed: int = 0) -> tuple[float, np.ndarray]:
    """GAP of guessing: every test image gets a landmark drawn uniformly from ``classes`` and a uniform random
    confidence. Returns the exact expectation and ``draws`` seeded samples.

    Random confidences rank the N images in a uniformly random order. Image i is right with probability
    q_i (the share of ``classes`` among its landmarks; 0 for a non-landmark image), independently of the
    others, and given it sits at rank k and is right, the k - 1 images above it hold on average
    (k - 1)(Q - q_i)/(N - 1) right ones (Q = sum of q). With precision hits/k at each right rank:
    E[GAP] = 1/M * sum_k 1/k * 1/N * sum_i q_i (1 + (k - 1)(Q - q_i)/(N - 1)).
    """
    from landmark_kaggle.evaluate.metrics import global_average_precision
    from landmark_kaggle.evaluate.submission import solution_truth

    truth = solution_truth(solution)
    classes = np.asarray(sorted(set(int(c) for c in classes)))
    n, m = len(truth.ids), truth.num_landmark_images
    landmarks = dict(zip(solution["id"], solution["landmarks"], strict=True))
    q = np.array([len(set(landmarks[i]) & set(classes.tolist())) / len(classes) for i in truth.ids])
    k = np.arange(1, n + 1)
    expected = float(sum((q * (1 + (kk - 1) * (q.sum() - q) / (n - 1))).sum() / (n * kk) for kk in k) / m)
    rng = np.random.default_rng(seed)
    ids = list(truth.ids)
    samples = np.array([global_average_precision(ids, rng.choice(classes, n), rng.random(n), truth)
                        for _ in range(draws)])
    return expected, samples


def chance_bar(solution_csv, train_csv, draws: int = 2000, quantile: float = 0.95) -> float:
    """The GAP that guessing exceeds once in 20 draws (``quantile``), for the better of two ways of guessing
    from the labels: a random training landmark per test image, or the most frequent one (ties at random),
    random confidences. A submission of empty rows stays below it, and one of answers unrelated to the images
    clears it 1 time in 20. (On the 24 test images of the inference sample: guessing averages 0.037, its 95th
    percentile is 0.13, its 99th 0.20 - one lucky draw; the tiny model's classifier alone scores 0.18.)"""
    from landmark_kaggle.evaluate.submission import read_solution

    solution = read_solution(solution_csv)
    counts = pd.read_csv(train_csv)["landmark_id"].value_counts()
    return max(float(np.quantile(chance_gap(solution, guess, draws)[1], quantile))
               for guess in (counts.index, counts.index[counts == counts.max()]))


def real_folder(root: Path, copies: int, sources: list[Path] | None = None, seed: int = 7,
                first_landmark: int = 1000) -> Path:
    """A GLDv2 folder of real GLDv2 photos: each source JPEG (default: the 13 of tests/data) under
    ``copies`` random ids, one landmark per source."""
    from landmark_kaggle.data.gld import image_path

    rng = np.random.default_rng(seed)
    rows = []
    for k, src in enumerate(sources if sources is not None else sorted(REALDATA.glob("*.jpg"))):
        for _ in range(copies):
            image_id = "".join(rng.choice(list("0123456789abcdef"), 16))
            dst = image_path(root, "train", image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            rows.append((image_id, first_landmark + k))
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    return root


def make_shards(root, *, num_classes=4, max_per_class=12, image_size=(48, 64), val_every=4, train_shards=2,
                seed=0) -> Path:
    """A GLDv2 sample under ``root/gld`` and its shards under ``root/tfrec`` (written with
    ``records.encode_example``, not the builder); returns the shard folder."""
    import cv2
    import tensorflow as tf

    from landmark_kaggle.data import records
    from landmark_kaggle.data.gld import attach_labels, load_train_index, make_label_map, write_label_map
    from landmark_kaggle.data.sample import make_sample

    root = Path(root)
    make_sample(root / "gld", seed=seed, num_classes=num_classes, max_per_class=max_per_class,
                image_size=image_size, noise_fraction=0.0)
    index = load_train_index(root / "gld")
    frame = index.frame.sort_values("id").reset_index(drop=True)
    label_map = make_label_map(frame["landmark_id"])
    labels = attach_labels(frame, label_map)
    out = root / "tfrec"
    out.mkdir(parents=True, exist_ok=True)
    write_label_map(label_map, out / "label_map.csv")
    splits = {"train": [], "validation": []}
    for i, row in frame.iterrows():
        split = "validation" if val_every and i % val_every == val_every - 1 else "train"
        splits[split].append((row, int(labels[i])))
    for split, rows in splits.items():
        total = train_shards if split == "train" else 1
        writers = [tf.io.TFRecordWriter(str(out / records.shard_name(split, j, total))) for j in range(total)]
        for n, (row, label) in enumerate(rows):
            data = Path(row["path"]).read_bytes()
            h, w = cv2.imread(str(row["path"])).shape[:2]
            writers[n % total].write(records.encode_example(
                image_bytes=data, image_id=row["id"], label=label, landmark_id=int(row["landmark_id"]),
                height=h, width=w))
        for wr in writers:
            wr.close()
    return out


def write_shards(root: Path, out: Path, split: str = "train") -> Path:
    """One shard of every image of a GLDv2 folder's ``split`` (test images get label -1), plus the label map."""
    import tensorflow as tf

    from landmark_kaggle.data.gld import load_test_index, load_train_index, write_label_map
    from landmark_kaggle.data.records import encode_example, shard_name

    index = load_train_index(root) if split == "train" else load_test_index(root)
    lm = dict(zip(index.label_map["landmark_id"], index.label_map["label"], strict=True))
    out.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out / shard_name(split, 0, 1))) as writer:
        for row in index.frame.itertuples():
            data = Path(row.path).read_bytes()
            h, w = tf.io.decode_jpeg(data).shape[:2]
            writer.write(encode_example(image_bytes=data, image_id=row.id, label=int(lm.get(row.landmark_id, -1)),
                                        landmark_id=int(row.landmark_id), height=int(h), width=int(w)))
    if split == "train":
        write_label_map(index.label_map, out / "label_map.csv")
    return out


def distractor_folder(out: Path, n: int = 24, seed: int = 5) -> Path:
    """Views of the sample's non-landmark photos (textures, text), never the test images themselves."""
    from landmark_kaggle.data.gld import image_path
    from landmark_kaggle.data.sample import DISTRACTOR_SOURCES, encode_jpeg, load_source, random_view

    rng = np.random.default_rng(seed)
    for i in range(n):
        src = load_source(*DISTRACTOR_SOURCES[i % len(DISTRACTOR_SOURCES)])
        view = random_view(src, rng, (48, 64))
        path = image_path(out, "test", f"{int(rng.integers(1 << 62)):016x}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(view, 90))
    return out


def train_tiny_model(root: Path, out: Path, epochs: int = 12, image_size: int = 64) -> Path:
    """EfficientNet-Lite0 from its offline ImageNet weights at ``image_size`` px, fine-tuned on every training
    image of a GLDv2 folder, saved as a model folder. (From random weights at 32 px the model's retrieval
    fell below guessing once the trainer decayed its weights for real: a test world must learn.)"""
    import tensorflow as tf

    from landmark_kaggle.config import config_from_dict
    from landmark_kaggle.data.gld import load_train_index
    from landmark_kaggle.data.pipeline import decode_image, eval_transform
    from landmark_kaggle.model.network import build_model, save_model_dir
    from landmark_kaggle.train.optim import compile_model

    index = load_train_index(root)
    cfg = config_from_dict({"data": {"image_size": image_size},
                            "model": {"backbone": "EfficientNetLite0", "weights": "imagenet", "embedding_dim": 32,
                                      "dropout": 0.0},
                            "train": {"epochs": epochs}, "optim": {"learning_rate": 1e-3, "warmup_epochs": 0},
                            "inference": {"batch_size": 16, "topk_neighbours": 3}})
    x = np.stack([eval_transform(decode_image(tf.io.read_file(p)), cfg.data).numpy() for p in index.frame["path"]])
    y = index.frame["label"].to_numpy()
    model = build_model(cfg, len(index.label_map))
    compile_model(model, cfg, steps_per_epoch=-(-len(x) // 8))
    model.fit(x, y, batch_size=8, epochs=cfg.train.epochs, verbose=0, shuffle=True)
    return save_model_dir(model, cfg, index.label_map, out)


def inference_world(base: Path) -> dict:
    """Sample + shards + tiny trained model + retrieval and distractor indexes under ``base`` (an empty folder:
    conftest's ``world`` builds it once a run, through ``built_once``)."""
    import keras

    from landmark_kaggle.data.sample import make_sample
    from landmark_kaggle.infer.embed_index import build_index

    world = {"root": base / "sample", "tfrec": base / "tfrec", "model": base / "model",
             "index": base / "index", "distractors": base / "distractors",
             "distractor_images": base / "distractor_images"}
    keras.utils.set_random_seed(0)
    make_sample(world["root"], num_classes=6, max_per_class=12, image_size=(48, 64), seed=0)
    write_shards(world["root"], world["tfrec"])
    train_tiny_model(world["root"], world["model"])
    build_index(world["model"], world["index"], data=str(world["tfrec"]))
    build_index(world["model"], world["distractors"], images=str(distractor_folder(base / "distractor_images")))
    return world


def ensemble_world(base: Path, world: dict) -> dict:
    """A second tiny model beside the world's (another seed, 40 px, fewer epochs) and the pair's indexes, with
    flip TTA: the non-landmark views, and the training shards with B against them (``embed-index --nonlandmarks``)."""
    import keras

    from landmark_kaggle.infer.embed_index import build_index

    out = {"model_b": base / "model_b", "index": base / "index", "distractors": base / "distractors"}
    keras.utils.set_random_seed(1)
    train_tiny_model(world["root"], out["model_b"], epochs=8, image_size=40)
    pair = [world["model"], out["model_b"]]
    # With flip TTA, as the tests that search them embed their queries (an index of another mode is refused).
    flip = ["inference.tta=flip"]
    build_index(pair, out["distractors"], images=str(world["distractor_images"]), overrides=flip)
    build_index(pair, out["index"], data=str(world["tfrec"]), nonlandmarks=out["distractors"], overrides=flip)
    return out


def weight_file_arrays(path) -> dict[str, np.ndarray]:
    """Every array in a Keras ``.weights.h5`` file, by its path inside the file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def run_cli(*args, builder: bool = False, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``landmark-kaggle ARGS`` (``tfrec-builder ARGS`` with ``builder``) in a subprocess, the way a user runs it,
    output captured."""
    return subprocess.run((BUILDER_CLI if builder else CLI) + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def score_json(solution, submission) -> dict:
    proc = run_cli("score", "--solution", solution, "--submission", submission, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- Kaggle input trees: what Kaggle mounts under /kaggle/input, in each layout it has been seen to use --------------

LAYOUTS = ("classic", "new", "models", "owner-models")


def input_path(root: Path, layout: str, kind: str, slug: str) -> Path:
    """Where Kaggle mounts source ``slug`` of ``kind`` (competition | dataset | model | notebook) in ``layout``.

    classic: ``<slug>/`` for everything; new: ``competitions/<slug>/``, ``datasets/<owner>/<slug>/`` and a
    notebook's output at ``notebooks/<owner>/<slug>/``; models: as new, but a model is an older Kaggle Model,
    ``<model>/<framework>/<variation>/<version>/``; owner-models: as new, a model a Kaggle Model of today,
    ``models/<owner>/<model>/<framework>/<variation>/<version>/`` (six levels).
    """
    if layout == "classic":
        return root / slug
    if kind == "competition":
        return root / "competitions" / slug
    if kind == "model" and layout == "models":
        return root / slug / "keras" / "default" / "1"
    if kind == "model" and layout == "owner-models":
        return root / "models" / "alice" / slug / "keras" / "default" / "1"
    if kind == "notebook":
        return root / "notebooks" / "alice" / slug
    return root / "datasets" / "alice" / slug


def kaggle_input_tree(root: Path, layout: str, sources: dict[str, tuple[str, Path]]) -> dict[str, Path]:
    """Copy each source folder (name -> (kind, folder)) to where ``layout`` mounts it; returns name -> new place."""
    placed = {}
    for name, (kind, folder) in sources.items():
        dest = input_path(root, layout, kind, name)
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("dataset-metadata.json"))
        placed[name] = dest
    return placed


def competition_folder(out: Path, images: list[Path], seed: int = 3) -> Path:
    """A test-only competition folder: the images under random ids as ``test/a/b/c/<id>.jpg`` + sample_submission."""
    from landmark_kaggle.data.gld import image_path

    rng = np.random.default_rng(seed)
    ids = []
    for src in images:
        image_id = "".join(rng.choice(list("0123456789abcdef"), 16))
        dst = image_path(out, "test", image_id)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        ids.append(image_id)
    pd.DataFrame({"id": sorted(ids), "landmarks": ""}).to_csv(out / "sample_submission.csv", index=False)
    return out


def kernel_process(kernel: str | Path, inp: Path, working: Path, rendered: Path | None = None, *,
                   python=sys.executable, settings: list[str] = (), args: str = "",
                   plan: bool = False) -> tuple[list[str], dict, Path]:
    """(command, environment, cwd) that run a kernel as Kaggle would: cwd = the working root, the roots moved by
    the environment, no package index, none of this checkout on the path.

    ``kernel`` is a kernel name, rendered into ``rendered`` as ``kernels push`` sends it, or the path of a
    script rendered already. ``settings`` go to the kernel's command as ``--set``, ``args`` as they are, both
    through LANDMARK_KAGGLE_ARGS (kernels/prelude.py); ``plan`` asks the launcher to print its command, not run
    it (LANDMARK_KAGGLE_PLAN).
    """
    from landmark_kaggle.kaggle import kernels
    from landmark_kaggle.paths import KAGGLE_INPUT_ENV, KAGGLE_WORKING_ENV

    working.mkdir(parents=True, exist_ok=True)
    if isinstance(kernel, Path):
        script = kernel
    else:
        folder = kernels.render_kernel(kernel, "alice", rendered)
        script = folder / json.loads((folder / "kernel-metadata.json").read_text())["code_file"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KERAS_BACKEND", "XLA_FLAGS")}
    # The prelude installs the wheel into a fresh temporary folder, as on Kaggle, where the container goes
    # with it; here that folder goes with the test's own (one kernel run left one in /tmp before).
    tmp = working.parent / f"{working.name}.tmp"
    tmp.mkdir(exist_ok=True)
    env.update({KAGGLE_INPUT_ENV: str(inp), KAGGLE_WORKING_ENV: str(working), "PIP_NO_INDEX": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp)})
    extra = " ".join(x for x in (shlex.join(a for s in settings for a in ("--set", s)), args) if x)
    if extra:
        env["LANDMARK_KAGGLE_ARGS"] = extra
    if plan:
        env["LANDMARK_KAGGLE_PLAN"] = "1"
    return [str(python), str(script)], env, working


def run_kernel(kernel: str | Path, inp: Path, working: Path, rendered: Path | None = None, *,
               python=sys.executable, settings: list[str] = (), args: str = "", plan: bool = False,
               wait: bool = True, timeout: int = 900):
    """Run a kernel as Kaggle would (``kernel_process``) to the end. ``wait=False`` returns the running
    ``Popen`` (stdout and stderr merged), in its own process group, so that ``kill_mid_run(..., group=True)``
    stops the launcher and the command it runs, as Kaggle would."""
    cmd, env, cwd = kernel_process(kernel, inp, working, rendered, python=python, settings=settings, args=args,
                                   plan=plan)
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- killing a run mid-way, for the resume tests -----------------------------------------------------------------

def _state(pid: int) -> str:
    """The kernel's one-letter state of process (or thread) ``pid``: R, S, D, T stopped, Z exited...; X: gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "X"


def _stopped(pid: int, waiting_ok: bool = False) -> bool:
    """Whether every thread of process ``pid`` is stopped (or the process exited). With ``waiting_ok`` a thread in
    state D counts too: a parent that vforked a child the SIGSTOP caught before its exec waits for that child,
    uninterruptibly, and cannot run before the child does."""
    try:
        threads = list(Path(f"/proc/{pid}/task").glob("[0-9]*"))
    except FileNotFoundError:  # gone since it was listed
        return True
    return all(_state(int(t.name)) in ("TtZXD" if waiting_ok else "TtZX") for t in threads)


def _members(proc: subprocess.Popen, group: bool) -> dict[int, int]:
    """pid -> parent pid of ``proc`` (with ``group``: of every process in its process group)."""
    if not group:
        return {proc.pid: 0}
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == proc.pid:
            found[int(stat.parent.name)] = int(fields[1])
    return found


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)


def freeze(proc: subprocess.Popen, group: bool = False) -> None:
    """SIGSTOP ``proc`` (with ``group``: its whole process group) and wait until the kernel reports every member
    stopped: from then on it writes nothing, so what a test reads is where the run stands."""
    _signal(proc, signal.SIGSTOP, group)
    deadline = time.monotonic() + 30
    while True:
        members = _members(proc, group)
        stopped = {pid for pid in members if _stopped(pid)}
        waiting = {pid for pid in set(members) - stopped
                   if any(parent == pid and child in stopped for child, parent in members.items())
                   and _stopped(pid, waiting_ok=True)}
        if len(stopped | waiting) == len(members):
            return
        assert time.monotonic() < deadline, f"the process did not stop within 30 s of SIGSTOP: {members}"
        time.sleep(0.001)


def kill_mid_run(proc: subprocess.Popen, progress, wanted, *, group: bool = False, timeout: float = 600):
    """SIGKILL the running ``proc`` once ``wanted(progress())`` holds; returns that progress.

    Each look freezes the process first (``freeze``), so progress is read while it cannot move and the kill
    lands exactly there, never after the run ended; a look that finds too little lets it run on (SIGCONT).
    A run that ends before ``wanted`` holds fails the test.
    """
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            freeze(proc, group)
            seen = progress()
            if _state(proc.pid) in "ZX":  # it exited between the poll and the SIGSTOP: seen is the finished run's
                break
            if wanted(seen):
                _signal(proc, signal.SIGKILL, group)
                proc.wait(timeout=60)
                return seen
            _signal(proc, signal.SIGCONT, group)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:  # not wanted, out of time, or a look that failed: never leave it frozen
            _signal(proc, signal.SIGKILL, group)
            proc.wait(timeout=60)
    raise AssertionError(f"the run ended (exit code {proc.returncode}, -9: killed after {timeout} s) before the "
                         f"progress wanted; it reached {progress()!r}")


def run_root(tmp_path_factory) -> Path:
    """The temp folder of this whole test run: pytest-N/, above every xdist worker's popen-gwK/."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s result, built once per test run however many xdist workers ask for it.

    A session or module fixture is set up once per worker (and a module's tests may land on several), so each
    heavy one would be built again by every worker that runs one of its tests. The first worker to ask builds
    into ``<run's temp>/name`` under an exclusive lock and pickles the result beside it; the others wait on the
    lock and load it. A build that raises pickles no result, so the next worker to ask clears the folder and
    builds again (and fails the same way, in its own test). What it builds must be read-only for its tests.
    """
    import fcntl
    import pickle

    root = run_root(tmp_path_factory)
    folder, result = root / name, root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.is_file():
            return pickle.loads(result.read_bytes())
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        value = build(folder)
        result.write_bytes(pickle.dumps(value))
        return value


def heavy(fixture_function):
    """Put under ``@pytest.fixture``: the fixture trains or embeds with a real network (well over 20 s to build),
    so conftest marks every test that needs it ``slow`` (``pytest -m "not slow"`` never builds it)."""
    fixture_function.heavy = True
    return fixture_function


# -- the stand-ins for Kaggle's images (envs/kaggle-gpu.txt, envs/kaggle-tpu.txt), built by `bash envs/setup.sh` ------

REPO = Path(__file__).resolve().parents[1]


def standin_python(kind: str) -> Path:
    """The python of ``.venv-kaggle-{kind}`` (gpu | tpu); missing or built from an older requirements file is a
    failure, not a skip (README command (b) builds both before pytest)."""
    import hashlib

    venv, requirements = REPO / f".venv-kaggle-{kind}", REPO / "envs" / f"kaggle-{kind}.txt"
    python, stamp = venv / "bin" / "python", venv / ".requirements.sha256"
    assert python.is_file(), f"no {python}: build the stand-in with `bash envs/setup.sh {kind}` (README command (b))"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    assert stamp.is_file() and stamp.read_text().strip() == want, \
        f"{venv} was built from another {requirements.name}: rerun `bash envs/setup.sh {kind}`"
    return python


class _LogValue:
    """One value of a compiled call's logs that records when it is brought to the host (float or numpy)."""

    __slots__ = ("value", "call", "reads")

    def __init__(self, value, call: int, reads: set):
        self.value, self.call, self.reads = value, call, reads

    def __float__(self):
        self.reads.add(self.call)
        return float(self.value)

    def __array__(self, dtype=None, copy=None):
        self.reads.add(self.call)
        return np.asarray(self.value, dtype=dtype)


class LogReads:
    """Which compiled training calls had their logs read on the host, by anyone (Keras's callback list included).

    ``with LogReads() as reads: model.fit(...)`` wraps every train function Keras makes meanwhile (TensorFlow's
    ``train_function(iterator) -> logs``, JAX's ``train_function(state, data) -> (logs, state)``) so that each
    log value counts its own conversion: ``reads.calls`` calls ran, ``reads.read`` holds the 1-based numbers of
    those whose logs were read.
    """

    def __enter__(self):
        import keras

        self.calls, self.read = 0, set()
        self._model, self._own = keras.Model, "make_train_function" in vars(keras.Model)
        original = keras.Model.make_train_function

        def make_train_function(model, force=False):
            original(model, force=force)
            inner = model.train_function
            if not getattr(inner, "_counts_reads", False):
                def counted(*args):
                    out = inner(*args)
                    self.calls += 1
                    logs, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
                    logs = {k: _LogValue(v, self.calls, self.read) for k, v in logs.items()}
                    return logs if rest is None else (logs, *rest)

                counted._counts_reads = True
                model.train_function = counted
            return model.train_function

        self._original = original
        keras.Model.make_train_function = make_train_function
        return self

    def __exit__(self, *exc):
        if self._own:
            self._model.make_train_function = self._original
        else:
            del self._model.make_train_function
        return False
