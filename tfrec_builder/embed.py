"""Embed every training image of a GLDv2 folder into an embeddings store (for `tfrec-builder clean`).

Backends: keras:<Application> (e.g. keras:EfficientNetB7), mmseg:<config>
(e.g. mmseg:deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512, needs the seg
extra), model:<MODEL_DIR> (a trained landmark-kaggle model) and
avg:<a>+<b>+... (mean of L2-normalised embeddings). --weights PATH gives the
local weights file, --weights none random weights (tests only); with neither,
a keras backend names the file Keras would fetch and where to put it.

The store is written chunk by chunk; a killed run resumes where it stopped when
the same command is run again (finished chunks are kept). An image that cannot
be read gets a NaN row and a line in the store's failed.csv; `clean` keeps
such images and counts them.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from landmark_kaggle.data.embstore import StoreError, StoreWriter, probe_image
from landmark_kaggle.data.gld import load_train_index
from landmark_kaggle.errors import UserError
from tfrec_builder.backends import Backend, build_backend, l2_normalize

DEFAULT_CHUNK = 4096


def read_image(path: str) -> tuple[np.ndarray | None, str]:
    """RGB uint8 image, or (None, reason) for a missing or undecodable file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError):
        return None, "missing file"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None, "not a decodable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), ""


def embed_images(backend: Backend, images: list[np.ndarray], batch_size: int) -> np.ndarray:
    """L2-normalised embeddings, in fixed-size batches (the last one padded) so the graph is traced once.

    Rows are stored unit-length: cleaning compares directions (cosine), and
    float16 would flush the tiny outputs of some networks to zero or overflow large ones.
    """
    out = []
    for s in range(0, len(images), batch_size):
        batch = images[s:s + batch_size]
        pad = batch_size - len(batch)
        vecs = l2_normalize(backend.embed(batch + [batch[-1]] * pad))
        out.append(vecs[:len(batch)])
    return np.concatenate(out) if out else np.zeros((0, backend.dim), np.float32)


def verify_rows(writer: StoreWriter, backend: Backend, paths: np.ndarray, batch_size: int, rows: int = 8) -> None:
    """Re-embed the first readable images of a finished store and refuse it if they differ.

    A store whose meta.json names one backend but whose vectors came from
    another (or from other weights) fails here, not later in ``clean``.
    """
    picked, images = [], []
    for i, path in enumerate(paths):
        image, _ = read_image(path)
        if image is not None:
            picked.append(i)
            images.append(image)
        if len(picked) == rows:
            break
    if not picked:
        return
    fresh = embed_images(backend, images, batch_size)
    stored = np.asarray(writer.matrix[picked], dtype=np.float32)
    err = float(np.abs(stored - fresh).max()) if np.isfinite(stored).all() else np.inf
    # Unit rows in float16 are good to ~1e-3; another network or weights is off by order 0.1-1.
    if err > 1e-2:
        raise StoreError(f"{writer.path}: rows {picked[0]}..{picked[-1]} differ from what {backend.name} computes now "
                         f"(relative error {err:.3g}); the store was not written by the backend and weights its "
                         "meta.json names")


def embed_dataset(data_dir, out_store, backend: str | Backend, *, weights: str | None = None,
                  image_size: int | None = None, batch_size: int = 32, chunk_size: int = DEFAULT_CHUNK,
                  max_chunks: int | None = None, workers: int = 4, seed: int = 0, progress: bool = True,
                  time_budget: float | None = None) -> Path:
    """Embed the training images of ``data_dir`` into ``out_store``; returns the store path.

    ``max_chunks`` stops after that many new chunks, ``time_budget`` (seconds from
    this call) before the chunk that would probably end past it; either way the
    store stays resumable, so a long embed can be spread over several
    time-limited sessions. At least one chunk is embedded per call.
    """
    started = time.time()
    index = load_train_index(data_dir)
    if isinstance(backend, str):
        backend = build_backend(backend, weights, image_size, seed)
    probe = embed_images(backend, [probe_image()], batch_size)[0]
    writer = StoreWriter(out_store, index.frame["id"].to_numpy(), dict(backend.meta(), l2_normalized=True),
                         backend.dim, chunk_size, probe)
    pending = writer.pending()
    if not pending:
        verify_rows(writer, backend, paths=index.frame["path"].to_numpy(), batch_size=batch_size)
        if progress:
            print(f"embed: {out_store} is already complete ({len(writer.ids)} images, {backend.name}); "
                  "its probe and first rows match this backend")
    todo = pending[:max_chunks] if max_chunks is not None else pending
    paths = index.frame["path"].to_numpy()
    ids = index.frame["id"].to_numpy()
    start, failed_total = time.time(), 0
    bar = tqdm(total=sum(writer.chunk_rows(k).stop - writer.chunk_rows(k).start for k in todo), unit="img",
               desc=f"embed {backend.name}", disable=not progress)
    # Chunk k+1 is decoded (by `workers` threads, driven from a separate thread so the two
    # pools cannot starve each other) while chunk k is on the network.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as reader:
        def decode(k: int) -> list:
            return list(pool.map(read_image, paths[writer.chunk_rows(k)]))

        ahead = reader.submit(decode, todo[0]) if todo else None
        loop_start = time.time()
        for n, k in enumerate(todo):
            # Chunks take about equally long: stop before one that would end past the budget.
            if time_budget is not None and n and time.time() + (time.time() - loop_start) / n > started + time_budget:
                todo = todo[:n]
                break
            sl = writer.chunk_rows(k)
            decoded = ahead.result()
            if n + 1 < len(todo):
                ahead = reader.submit(decode, todo[n + 1])
            good = [i for i, (im, _) in enumerate(decoded) if im is not None]
            failed = [(str(ids[sl.start + i]), why) for i, (im, why) in enumerate(decoded) if im is None]
            rows = np.full((sl.stop - sl.start, backend.dim), np.nan, np.float32)
            if good:
                rows[good] = embed_images(backend, [decoded[i][0] for i in good], batch_size)
            writer.write_chunk(k, rows, failed)
            failed_total += len(failed)
            bar.update(sl.stop - sl.start)
    bar.close()
    left = len(writer.pending())
    if left == 0:
        writer.finalize()
    if progress and todo:
        state = "complete" if left == 0 else f"{left} chunk(s) left; rerun to resume"
        print(f"embed: {sum(writer.chunk_rows(k).stop - writer.chunk_rows(k).start for k in todo)} images "
              f"({failed_total} unreadable) with {backend.name} (dim {backend.dim}) in {time.time() - start:.1f}s "
              f"-> {out_store} [{state}]")
    return Path(out_store)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="GLDv2 folder (train.csv or train_clean.csv, train/a/b/c/*.jpg)")
    parser.add_argument("--out", help="embeddings store folder (created, or resumed if it exists)")
    parser.add_argument("--backend", required=True,
                        help="keras:<App> | mmseg:<config> | model:<MODEL_DIR> | avg:<a>+<b>+...")
    parser.add_argument("--weights", default=None,
                        help="local weights file, 'imagenet' to let Keras download them (needs a network), "
                             "or 'none' for random weights (tests only)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (keras default 224, mmseg 512; a model folder uses its own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="images per resumable chunk")
    parser.add_argument("--max-chunks", type=int, default=None,
                        help="stop after this many chunks (resume later with the same command)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-reading threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (--weights none)")
    parser.add_argument("--time-budget", default=None, metavar="DURATION",
                        help="stop cleanly before a chunk that would end past this (e.g. 11h, 90m; resume later "
                             "with the same command); --kaggle: 11h")
    parser.add_argument("--kaggle", action="store_true",
                        help="a Kaggle kernel: the competition folder, weights and a previous version's store are "
                             "found among the inputs, the store goes to the working folder's embeddings/, and "
                             "clean/ follows once it is complete (tfrec_builder.onkaggle)")


def run(args: argparse.Namespace) -> int:
    if args.kaggle:
        return run_kaggle(args)
    if not args.data or not args.out:
        raise UserError("embed needs --data and --out (or --kaggle)")
    budget = None
    if args.time_budget:
        from landmark_kaggle.config_args import parse_duration

        budget = parse_duration(args.time_budget)
    embed_dataset(args.data, args.out, args.backend, weights=args.weights, image_size=args.image_size,
                  batch_size=args.batch_size, chunk_size=args.chunk_size, max_chunks=args.max_chunks,
                  workers=args.workers, seed=args.seed, time_budget=budget)
    return 0


def run_kaggle(args: argparse.Namespace) -> int:
    """The build-embed kernel: continue the store within the time budget; once it is complete, clean."""
    from tfrec_builder import onkaggle
    from tfrec_builder.clean import clean_dataset

    if args.data or args.out:
        raise UserError("--kaggle finds the data and writes to the working folder: drop --data and --out")
    plan = onkaggle.embed_plan(args)
    try:
        embed_dataset(plan["data"], plan["store"], args.backend, weights=plan["weights"], image_size=args.image_size,
                      batch_size=args.batch_size, chunk_size=args.chunk_size, max_chunks=args.max_chunks,
                      workers=args.workers, seed=args.seed, time_budget=plan["deadline"] - time.time())
    except StoreError as exc:
        if plan["previous"] is None:
            raise
        raise onkaggle.resumed_store_error(exc, plan["previous"]) from None
    if not onkaggle.store_complete(plan["store"]):
        return 0
    # The poster's settings (clean's defaults); a CPU kernel running `clean --kaggle` can choose others.
    print(onkaggle.clean_summary(clean_dataset(plan["store"], plan["data"], plan["clean"]), plan["clean"]))
    return 0
