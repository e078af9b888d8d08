"""``embed --kaggle``: the build-embed kernel's inputs found by what they hold, its output in the working folder.

Everything the kernel needs is found under the input root by
``landmark_kaggle.paths.find_inputs``, never by a slug: the competition
folder; the backbone's weights (an attached file of the name Keras would
download, e.g. ``efficientnetb7_notop.h5``, or the only weights file attached;
else ``imagenet``: Keras downloads them, build kernels have internet); a
previous version's store (attached by ``kernels push build-embed --continue``),
copied into the working folder and continued. It stops cleanly before its
time budget, and once the store is complete it runs ``clean`` on it, so the
kernel's output holds ``embeddings/`` and ``clean/``.

Why clean runs once, in the embed kernel, and the build-write kernels read its
``outliers.csv`` instead of each clustering again: DBSCAN on another machine
can round one distance to the other side of eps, and parts planned from two
different outlier lists are not one build.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from landmark_kaggle.data.embstore import CHUNKS, META, StoreError, chunks_done
from landmark_kaggle.errors import UserError
from landmark_kaggle.paths import find_inputs, kaggle_working_root

STORE_DIR = "embeddings"
CLEAN_DIR = "clean"
# Kaggle ends a GPU session at 12 h and keeps nothing of a session it had to end: stop before that,
# with room for copying the previous store in and for the clean that follows the last chunk.
DEFAULT_EMBED_BUDGET = "11h"


def copy_store(source: Path, dest: Path) -> None:
    """Copy an attached (read-only) store into the working folder, writable, so the next chunks go into it.

    Plain file copies, not ``copytree``: that would copy the input's read-only modes too.
    """
    started = time.time()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / CHUNKS).mkdir(parents=True)
    total = 0
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = tmp / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            total += path.stat().st_size
    tmp.rename(dest)  # whole or not at all: a half-copied store must not look resumable
    done = chunks_done(dest)
    print(f"embed --kaggle: continuing the store of a previous version: {source} ({done} chunks done, "
          f"{total / 1e9:.2f} GB copied in {time.time() - started:.0f} s)", flush=True)


def _keras_weights_name(backend: str) -> str | None:
    """The file Keras would download for ``keras:<App>`` (e.g. efficientnetb7_notop.h5); None for other kinds."""
    kind, _, app = backend.partition(":")
    if kind != "keras" or "@" in app:
        return None
    import keras

    from tfrec_builder.keras_backends import keras_imagenet_file

    factory = getattr(keras.applications, app, None)
    if factory is None:
        return None
    return keras_imagenet_file(factory, {"include_top": False, "pooling": "avg"})[0]


def choose_weights(backend: str, weights: str | None, found: list[Path]) -> str | None:
    """``--weights`` as given; else an attached file of the name Keras uses, else the one attached weights file,
    else ``imagenet`` (download) for a keras backend."""
    if weights is not None:
        return weights
    name = _keras_weights_name(backend)
    if name is None:
        return None
    named = [p for p in found if p.name == name]
    pick = named[0] if len(named) == 1 else (found[0] if len(found) == 1 else None)
    if pick is not None:
        print(f"embed --kaggle: weights {pick} (attached)", flush=True)
        return str(pick)
    if len(found) > 1:
        listed = ", ".join(map(str, found))
        raise UserError(f"several weights files attached and none named {name}: {listed}; attach one")
    print(f"embed --kaggle: no {name} attached; Keras downloads it (the kernel needs internet on)", flush=True)
    return "imagenet"


def embed_plan(args) -> dict:
    """What ``embed --kaggle`` works on: data, store (a previous version's copied in), weights, deadline."""
    from landmark_kaggle.config_args import parse_duration

    deadline = time.time() + parse_duration(args.time_budget or DEFAULT_EMBED_BUDGET)
    inputs = find_inputs()
    working = kaggle_working_root()
    store = working / STORE_DIR
    previous = None
    if not (store / META).is_file():
        previous = inputs.optional("embeddings")
        if previous is not None:
            copy_store(previous, store)
    return {"data": inputs.one("competition"), "store": store, "previous": previous, "deadline": deadline,
            "weights": choose_weights(args.backend, args.weights, inputs["weights"]), "clean": working / CLEAN_DIR}


def resumed_store_error(exc: StoreError, previous: Path) -> StoreError:
    return StoreError(f"{exc}. It was copied from {previous}, the output of an earlier version: to start over "
                      "with these settings, push without --continue")


def store_complete(store: Path) -> bool:
    """Whether the store is finished; if not, say how far it got and how to continue."""
    meta = json.loads((store / META).read_text(encoding="utf-8"))
    if meta.get("complete"):
        return True
    done = chunks_done(store)
    total = -(-int(meta["count"]) // int(meta["chunk_size"]))
    print(f"embed --kaggle: stopped at the time budget with {done} of {total} chunks done; the store in "
          f"{store} is this version's output. Continue it: landmark-kaggle kernels push build-embed --continue")
    return False


def clean_summary(r: dict, out: Path) -> str:
    return (f"embed --kaggle: clean removed {r['images']['removed']} of {r['images']['in']} images from "
            f"{r['classes']['touched']} of {r['classes']['in']} classes in {r['seconds']:.0f} s -> {out} "
            f"(the build-write kernels read {out / 'outliers.csv'})")
