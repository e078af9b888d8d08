"""Fit the poster's embedding-only model (Figure 6) on an embeddings store from `tfrec-builder embed`.

Dense (+ BatchNorm, Dropout) → the same cosine classifier and ArcFace loss as
the image model, trained on stored vectors instead of pixels, so it takes
minutes where the image model takes hours. Labels come from the GLDv2 data
folder's train.csv (or train_clean.csv); store rows without a label and
labelled images without a stored vector are counted and reported, never
dropped silently. A fixed fraction of images (by id hash) is held out for the
top-k validation metrics. Writes MODEL_DIR with model.weights.h5 (input: one
embedding vector), config.json, label_map.csv, history.csv and plots/.

With many classes (GLDv2: 81,313) training uses Partial FC (An et al. 2021,
`partial_fc.py`, `embeddings.class_sample`): each step computes the cosine logits
and the ArcFace softmax only over the classes in its batch plus random other
classes, ~10% of them, instead of all of them, which is what makes an epoch
over 1.58M vectors take minutes on a CPU. The margin still applies to each
row's own class; validation top-k and the saved model use every class.
`--set embeddings.class_sample=1.0` trains with the full softmax instead (the
default, 0, means 0.1 above 20,000 classes and 1.0 below).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from landmark_kaggle.config import load_config
from landmark_kaggle.config_args import add_config_arguments

# The dense AdamW update of the 41.6M-parameter GLDv2 classifier is paid once a step, so big batches amortise it.
DEFAULT_BATCH = 4096
# Validation builds several batch × classes float32 tensors (1.3 GB each at 4096 × 81,313): keep its batch small.
VAL_BATCH = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, metavar="STORE", help="store written by `tfrec-builder embed`")
    parser.add_argument("--data", required=True, metavar="GLD_DIR",
                        help="the GLDv2 folder the store was embedded from (its train.csv gives the labels); "
                             "unlike train's --data, not shards: the store holds vectors, not images")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="output model folder")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of images held out for validation")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
                        help=f"vectors a step (default {DEFAULT_BATCH}; sets train.batch_size over the config "
                             "file, a --set train.batch_size=… still wins)")
    add_config_arguments(parser)


def _held_out(ids: np.ndarray, fraction: float) -> np.ndarray:
    """A stable split: an image is held out by the hash of its id, whatever the row order."""
    cut = int(fraction * 2**32)
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big") < cut for i in ids],
                    dtype=bool)


def make_trainer(model, cfg, class_counts=None, *, steps_per_epoch: int, batch_size: int):
    """What ``fit`` runs: ``model`` compiled as is (full softmax) or a Partial FC trainer around it; and K.

    K is the classes one training step sees (all of them for the full
    softmax). Either way validation metrics are top-k over every class.
    """
    from landmark_kaggle.train.optim import compile_model, make_loss
    from landmark_kaggle.train.partial_fc import PartialFCTrainer, resolve_rate, sample_size

    num_classes = int(model.output_shape[-1])
    k = sample_size(num_classes, resolve_rate(cfg.embeddings.class_sample, num_classes), batch_size)
    if k >= num_classes:
        compile_model(model, cfg, class_counts, steps_per_epoch=steps_per_epoch)
        return model, num_classes
    loss = make_loss(cfg, class_counts)
    trainer = PartialFCTrainer(model, num_sampled=k, scale=loss.scale, margin=loss.margin, margins=loss.margins,
                               easy_margin=loss.easy_margin, seed=cfg.train.seed)
    compile_model(trainer, cfg, steps_per_epoch=steps_per_epoch, num_classes=num_classes, loss=loss)
    return trainer, k


def train_on_embeddings(store_path, data_dir, out_dir, cfg, *, val_fraction: float = 0.05,
                        progress: bool = True) -> dict:
    """Train the Figure 6 model; returns a summary with counts, history and the model folder."""
    import keras
    import pandas as pd

    from landmark_kaggle.data.embstore import open_store
    from landmark_kaggle.data.gld import load_train_index
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.model.network import build_embedding_model, save_model_dir
    from landmark_kaggle.train.plots import plot_history
    from landmark_kaggle.train.schedule import schedule_from_config

    t0 = time.monotonic()
    store = open_store(store_path)
    index = load_train_index(data_dir)
    frame = index.frame[["id", "label"]]
    joined = pd.DataFrame({"id": store.ids, "row": np.arange(len(store))}).merge(frame, on="id", how="inner")
    no_label = len(store) - len(joined)
    no_vector = len(frame) - len(joined)
    if joined.empty:
        raise UserError(f"{store_path}: none of its {len(store)} ids is in {index.source}; "
                        "was the store embedded from this data folder?")
    joined = joined.sort_values("row").reset_index(drop=True)
    x = np.asarray(store.matrix[joined["row"].to_numpy()], dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)  # images embed could not read are NaN rows
    unreadable = int((~finite).sum())
    x, joined = x[finite], joined[finite].reset_index(drop=True)
    if joined.empty:
        raise UserError(f"{store_path}: every labelled row is NaN (the images failed to embed)")
    y = joined["label"].to_numpy(dtype=np.int64)
    held = _held_out(joined["id"].to_numpy(), val_fraction) if val_fraction > 0 else np.zeros(len(y), bool)
    if held.all():
        held[:] = False
    counts = index.label_map["count"].to_numpy()
    batch = min(cfg.train.batch_size, int((~held).sum()))
    # Keras walks the arrays in ceil(n / batch) steps an epoch; the schedule must count the same steps.
    steps = cfg.train.steps_per_epoch or -(-int((~held).sum()) // batch)
    keras.utils.set_random_seed(cfg.train.seed)
    model = build_embedding_model(cfg, store.dim, index.num_classes)
    trainer, sampled = make_trainer(model, cfg, counts, steps_per_epoch=steps, batch_size=batch)
    callbacks = [keras.callbacks.BackupAndRestore(str(Path(out_dir) / "checkpoint"))]
    val = (x[held], y[held]) if held.any() else None
    hist = trainer.fit(x[~held], y[~held], batch_size=batch, epochs=cfg.train.epochs,
                       steps_per_epoch=cfg.train.steps_per_epoch or None, validation_data=val,
                       validation_batch_size=min(batch, VAL_BATCH), callbacks=callbacks,
                       verbose=2 if progress else 0, shuffle=True)
    sched = schedule_from_config(cfg, steps)
    history = pd.DataFrame(hist.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1) + cfg.train.epochs - len(history))
    history.insert(1, "lr", sched.by_epoch(history["epoch"].to_numpy() - 1))
    out = save_model_dir(model, cfg, index.label_map, out_dir,
                         extra={"input": "embedding", "embedding_backend": store.meta.get("backend"),
                                "embedding_dim": store.dim})
    history.to_csv(out / "history.csv", index=False)
    plot_history(history, sched.by_epoch, cfg.train.epochs, out / "plots")
    summary = {"trained_on": int((~held).sum()), "validated_on": int(held.sum()), "store_rows_without_label": no_label,
               "images_without_vector": no_vector, "unreadable_rows": unreadable,
               "num_classes": index.num_classes, "classes_per_step": sampled, "batch_size": batch,
               "epochs": len(history),
               "history": history.to_dict("records"), "model_dir": str(out),
               "seconds": round(time.monotonic() - t0, 1)}
    if progress:
        last = summary["history"][-1]
        print(f"train-embeddings: {summary['trained_on']} train / {summary['validated_on']} validation vectors, "
              f"skipped: {no_label} store rows without a label, {no_vector} labelled images without a vector, "
              f"{unreadable} NaN rows; batch {batch}, softmax over {sampled} of {index.num_classes} classes a step; "
              f"loss {last['loss']:.4f}, val top1 {last.get('val_top1', float('nan')):.4f}, "
              f"{summary['seconds']:.0f} s → {out}")
    return summary


def run(args) -> int:
    from landmark_kaggle.errors import UserError

    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be in [0, 1)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    data = Path(args.data)
    if (data / "label_map.csv").is_file() and any(data.glob("*.tfrec")) and not (data / "train.csv").is_file():
        raise UserError(f"--data {data} holds TFRecord shards; train-embeddings reads the labels of the stored "
                        "vectors from the GLDv2 folder they were embedded from (its train.csv): pass that folder")
    cfg = load_config(args.config, [f"train.batch_size={args.batch_size}", *args.overrides])
    train_on_embeddings(args.embeddings, args.data, args.out, cfg, val_fraction=args.val_fraction)
    return 0
