"""The build kernels, rendered and run for real in a Kaggle-like tree: embed (killed, resumed), clean, parts, train.

Each kernel is rendered as ``kernels push`` sends it (prelude pasted in),
installed from the bundled wheel (never this checkout) and run with the
input and working roots moved under tmp. A kernel version's output becomes
the next one's input the way Kaggle attaches it (``kernel_sources``): the
working folder, copied read-only under ``input/<kernel-slug>/``. The
backbone is MobileNetV3Small at 32 px with random weights, set through
LANDMARK_KAGGLE_ARGS (appended to the launcher's command), so nothing needs
the internet.
"""

import json
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import heavy, kill_mid_run, real_folder, run_cli, run_kernel

from landmark_kaggle import paths
from landmark_kaggle.data import embstore
from landmark_kaggle.kaggle import kernels
from landmark_kaggle.paths import find_inputs

BACKBONE = "--backend keras:MobileNetV3Small --weights none --image-size 32 --batch-size 4"
CHUNK = 6


def attach(output: Path, inp: Path, slug: str) -> Path:
    """A kernel's output as Kaggle attaches it to the next kernel: under the input root, read-only."""
    dest = inp / slug
    if dest.exists():
        for p in [dest, *dest.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(dest)
    shutil.copytree(output, dest)
    for p in [*dest.rglob("*"), dest]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dest


def render(tmp: Path, name: str, *extra: str) -> Path:
    """``landmark-kaggle kernels push NAME … --dry-run``: the folder a push would send."""
    out = tmp / "rendered" / f"{name}-{len(list(tmp.glob('rendered/*')))}"
    proc = run_cli("kernels", "push", name, "--user", "alice", "--dry-run", "--out", out, *extra, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.split("rendered ", 1)[1].split(" (not pushed)")[0]).parent
    return folder / json.loads((folder / "kernel-metadata.json").read_text())["code_file"]


def _chunks_done(store: Path) -> int:
    # Markers only: a kill can leave a marker's temporary file (.00003.<pid>.tmp.json) beside them.
    return len(list((store / embstore.CHUNKS).glob("[0-9]*.json")))


@pytest.fixture(scope="module")
def tree(tmp_path_factory, realdata):
    """input/ with the competition (real GLDv2 photos, 13 classes × 6) and the wheel dataset."""
    base = tmp_path_factory.mktemp("kaggle")
    inp = base / "input"
    comp = real_folder(inp / "competitions" / paths.COMPETITION, copies=6, sources=realdata)
    # Label noise, as in GLDv2: each class also holds two photos of other landmarks (listed in noise.csv).
    from landmark_kaggle.data.gld import image_path

    train = pd.read_csv(comp / "train.csv", dtype={"id": str})
    noise = []
    for k in range(len(realdata)):
        for j, shift in enumerate((3, 7)):
            image_id = f"f{k:02x}{j:013x}"
            dst = image_path(comp, "train", image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(realdata[(k + shift) % len(realdata)], dst)
            noise.append((image_id, 1000 + k))
    noise = pd.DataFrame(noise, columns=["id", "landmark_id"])
    pd.concat([train, noise]).to_csv(comp / "train.csv", index=False)
    noise.to_csv(comp / "noise.csv", index=False)
    (comp / "test").mkdir()
    pd.DataFrame({"id": [], "landmarks": []}).to_csv(comp / "sample_submission.csv", index=False)
    kernels.build_wheel(inp / kernels.WHEEL_DATASET)
    return {"base": base, "input": inp, "comp": comp}


@pytest.fixture(scope="module")
@heavy
def embedded(tree):
    """Three versions of the embed kernel: killed mid-run, stopped by its time budget, finished (then clean)."""
    base, inp = tree["base"], tree["input"]
    args = f"{BACKBONE} --chunk-size {CHUNK}"
    script = render(base, "build-embed", "--continue", "--args", args)  # the options travel in the script
    total = -(-len(pd.read_csv(tree["comp"] / "train.csv")) // CHUNK)
    started = time.time()

    # An independent, uninterrupted embed of the same images: what the three versions must add up to.
    ref = base / "reference"
    proc = run_cli("embed", "--data", tree["comp"], "--out", ref, *args.split(), builder=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    v1 = base / "v1"
    proc = run_kernel(script, inp, v1, wait=False)
    # The launcher and the embed it runs, frozen together before each look (its stdout is read afterwards:
    # a few KB, well within the pipe's buffer).
    try:
        killed_at = kill_mid_run(proc, lambda: _chunks_done(v1 / "embeddings"), lambda n: n >= 2, group=True,
                                 timeout=300)
    finally:
        log1 = proc.communicate()[0]
    attach(v1, inp, "landmark-kaggle-build-embed")

    v2 = base / "v2"
    out2 = run_kernel(script, inp, v2, args="--time-budget 0s")  # one chunk: at least one a run
    attach(v2, inp, "landmark-kaggle-build-embed")  # Kaggle mounts the latest version's output

    v3 = base / "v3"
    out3 = run_kernel(script, inp, v3)
    return dict(ref=ref, total=total, killed_at=killed_at, log1=log1, out2=out2, out3=out3, v1=v1, v2=v2, v3=v3,
                seconds=time.time() - started)


def test_embed_kernel_resumes_from_its_previous_output_after_a_kill(tree, embedded):
    e = embedded
    assert 2 <= e["killed_at"] < e["total"], f"the kill should land mid-run:\n{e['log1'][-2000:]}"
    # Version 2 copied the killed version's store in, embedded one more chunk, stopped cleanly and said how
    # to continue; no clean yet.
    out2 = e["out2"]
    assert out2.returncode == 0, out2.stdout[-3000:] + out2.stderr[-3000:]
    assert f"({e['killed_at']} chunks done" in out2.stdout
    assert f"embed: {CHUNK} images" in out2.stdout
    assert f"with {e['killed_at'] + 1} of {e['total']} chunks done" in out2.stdout
    assert "kernels push build-embed --continue" in out2.stdout
    assert _chunks_done(e["v2"] / "embeddings") == e["killed_at"] + 1 and not (e["v2"] / "clean").exists()
    # Version 3 finished the rest from version 2's output, then cleaned.
    out3 = e["out3"]
    assert out3.returncode == 0, out3.stdout[-3000:] + out3.stderr[-3000:]
    assert f"({e['killed_at'] + 1} chunks done" in out3.stdout
    rows = len(pd.read_csv(tree["comp"] / "train.csv")) - (e["killed_at"] + 1) * CHUNK
    assert f"embed: {rows} images" in out3.stdout
    assert "installed landmark_kaggle-" in out3.stdout  # from the wheel dataset, not this checkout
    store, ref = embstore.open_store(e["v3"] / "embeddings"), embstore.open_store(e["ref"])
    assert (store.ids == ref.ids).all()
    assert np.abs(np.asarray(store.matrix, np.float32) - np.asarray(ref.matrix, np.float32)).max() < 1e-3
    report = json.loads((e["v3"] / "clean" / "report.json").read_text())
    assert report["images"]["in"] == len(ref) and report["settings"]["eps"] == 0.33
    assert report["images"]["removed"] > 0 and report["noise"]["listed"] == 26
    assert report["settings"]["min_samples"] == 2 and report["settings"]["metric"] == "cosine"
    # The attached previous output (version 2's) was read, never written: the chunks went to the working folder.
    attached = tree["input"] / "landmark-kaggle-build-embed" / "embeddings"
    assert _chunks_done(attached) == e["killed_at"] + 1
    assert (attached / embstore.MATRIX).read_bytes() == (e["v2"] / "embeddings" / embstore.MATRIX).read_bytes()
    print(f"\nembed kernel: reference + 3 versions in {e['seconds']:.0f} s")


@pytest.fixture(scope="module")
def written(tree, embedded):
    """The build-write kernel, once per part, each attached to the finished embed kernel's output."""
    from tfrec_builder.parts import GB
    from tfrec_builder.plan import make_plan

    base = tree["base"]
    inp = base / "input-write"
    shutil.copytree(tree["input"] / "competitions", inp / "competitions")
    shutil.copytree(tree["input"] / kernels.WHEEL_DATASET, inp / kernels.WHEEL_DATASET)
    embed_out = attach(embedded["v3"], inp, "landmark-kaggle-build-embed")
    settings = dict(image_size=200, shard_mb=0.25, val_fraction=0.1)
    plan = make_plan(tree["comp"], outliers=embed_out / "clean" / "outliers.csv", quality=90, seed=0, **settings)
    cap = sum(s.planned_bytes for s in plan.shards) / 2.5 / GB  # three parts
    args = (f"--max-part-gb {cap!r} --image-size 200 --shard-mb 0.25 --val-fraction 0.1 --workers 1 "
            "--no-progress")
    started = time.time()
    first = run_kernel(render(base, "build-write", "--part", "1"), inp, base / "w1", args=args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    count = json.loads((base / "w1" / "tfrec" / "parts.json").read_text())["count"]
    outs = {1: first}
    for k in range(2, count + 1):
        outs[k] = run_kernel(render(base, "build-write", "--part", str(k)), inp, base / f"w{k}", args=args)
    seconds = time.time() - started
    # What the train kernel sees: every part kernel's output attached side by side.
    train_inp = base / "input-train"
    for k in range(1, count + 1):
        if (base / f"w{k}" / "tfrec").is_dir():
            attach(base / f"w{k}", train_inp, f"landmark-kaggle-build-write-part-{k}")
    return dict(inp=inp, embed_out=embed_out, count=count, outs=outs, seconds=seconds, train_inp=train_inp)


def test_write_kernels_make_one_valid_part_each(tree, embedded, written):
    from tfrec_builder.verify import verify_dataset

    base, count = tree["base"], written["count"]
    assert count >= 3
    outliers = pd.read_csv(written["embed_out"] / "clean" / "outliers.csv", dtype={"id": str})
    doc = json.loads((base / "w1" / "tfrec" / "parts.json").read_text())
    seen = []
    for k in range(1, count + 1):
        out = written["outs"][k]
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"part {k}/{count}: wrote " in out.stdout
        assert f"--outliers {written['embed_out'] / 'clean' / 'outliers.csv'} --out tfrec --part {k} " in out.stdout
        tfrec = base / f"w{k}" / "tfrec"
        folder = tfrec / f"gldv2-tfrec-512-part-{k}"
        # Only this part in this kernel's output, with the build's one table.
        assert sorted(p.name for p in tfrec.iterdir()) == sorted(["parts.json", folder.name])
        assert json.loads((tfrec / "parts.json").read_text()) == doc
        meta = json.loads((folder / "dataset-metadata.json").read_text())
        assert meta["id"] == f"alice/gldv2-tfrec-512-part-{k}" and f"part {k} of {count}" in meta["title"]
        assert 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1
        assert verify_dataset(folder) == []
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["parts"]["part"] == k and manifest["removed"] == (len(outliers) if k == 1 else 0)
        seen += [s["file"] for s in manifest["shards"]]
    assert sorted(seen) == sorted(s for row in doc["table"] for s in row["shards"])
    # Attached side by side to the next kernel, they verify as one build.
    assert verify_dataset(written["train_inp"]) == []
    print(f"\nwrite kernels: {count} parts in {written['seconds']:.0f} s")


@pytest.mark.slow
def test_the_train_kernel_finds_every_part_by_content_and_reads_all_of_them(tree, written):
    import tensorflow as tf

    from landmark_kaggle.data import records
    inp = written["train_inp"]
    shutil.copytree(tree["input"] / kernels.WHEEL_DATASET, inp / kernels.WHEEL_DATASET)
    found = find_inputs(inp).every("shards")
    assert len(found) == written["count"]
    ids = []
    for split in records.SPLITS:
        files = [f for d in found for f in records.list_shards(str(d), split)]
        ids += [r["id"].decode() for r in tf.data.TFRecordDataset(files).map(records.parse_example).as_numpy_iterator()]
    train = pd.read_csv(tree["comp"] / "train.csv", dtype={"id": str})
    outliers = set(pd.read_csv(written["embed_out"] / "clean" / "outliers.csv", dtype={"id": str})["id"])
    assert sorted(ids) == sorted(set(train["id"]) - outliers)
    # The train kernel itself, from the wheel, rehearsed on the CPU (LANDMARK_KAGGLE_ARGS wins over its settings).
    settings = ["runtime.strategy=cpu", "runtime.require_accelerator=false", "runtime.precision=float32",
                "model.weights=none", "model.backbone=MobileNetV3Small", "data.image_size=32", "train.epochs=1",
                "train.batch_size=8"]
    started = time.time()
    working = tree["base"] / "train-working"
    proc = run_kernel(render(tree["base"], "train", "--shards", str(written["count"])), inp, working,
                      settings=settings)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"train --kaggle: shards {', '.join(map(str, found))};" in proc.stdout
    saved = json.loads((working / "model" / "config.json").read_text())
    # One epoch is every training record of every part once over: steps = records // batch.
    n_train = sum(json.loads((d / "manifest.json").read_text())["written"]["train"] for d in found)
    assert saved["global_step"] == n_train // 8
    assert (working / "model" / "label_map.csv").read_bytes() == (found[0] / "label_map.csv").read_bytes()
    print(f"\ntrain kernel on {len(found)} parts: {time.time() - started:.0f} s")


def test_weights_imagenet_downloads_through_keras_or_names_the_file_to_attach(tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tfrec_builder.backends import BackendError
    from tfrec_builder.keras_backends import fetch_imagenet_file

    name = "efficientnetb7_notop.h5"
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / name).write_bytes(b"weights" * 1000)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}/{name}"
        cache = tmp_path / "keras" / "models" / name
        assert fetch_imagenet_file(name, origin, cache, "keras:EfficientNetB7") == cache
        assert cache.read_bytes() == (tmp_path / "srv" / name).read_bytes()
        with pytest.raises(BackendError, match=f"cannot download .*gone.h5 .*attach a file {name}"):
            fetch_imagenet_file(name, origin.replace(name, "gone.h5"), tmp_path / "k2" / "models" / name,
                                "keras:EfficientNetB7")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_embed_kaggle_takes_the_attached_weights_of_keras_own_name(tmp_path, capsys):
    from tfrec_builder.onkaggle import _keras_weights_name, choose_weights

    name = _keras_weights_name("keras:EfficientNetB7")
    assert name == "efficientnetb7_notop.h5"
    named, other = tmp_path / "a" / name, tmp_path / "b" / "other.h5"
    assert choose_weights("keras:EfficientNetB7", None, [other, named]) == str(named)
    assert choose_weights("keras:EfficientNetB7", None, [other]) == str(other)  # the only one attached
    assert choose_weights("keras:EfficientNetB7", None, []) == "imagenet"
    assert "Keras downloads it (the kernel needs internet on)" in capsys.readouterr().out
    assert choose_weights("keras:EfficientNetB7", "none", [named]) == "none"  # --weights wins
    assert choose_weights("mmseg:some_config", None, [named]) is None
    with pytest.raises(paths.UserError, match=f"several weights files attached and none named {name}"):
        choose_weights("keras:EfficientNetB7", None, [other, tmp_path / "c.h5"])
