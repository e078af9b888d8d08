"""Tiny shard folders for the trainer's tests: the embedded sample photos written with ``records.encode_example``."""

from pathlib import Path

import cv2
import tensorflow as tf

from landmark_kaggle import records
from landmark_kaggle.gld import attach_labels, load_train_index, make_label_map, write_label_map
from landmark_kaggle.sample import make_sample


def make_shards(root, *, num_classes=4, max_per_class=12, image_size=(48, 64), val_every=4, train_shards=2,
                seed=0) -> Path:
    """A GLDv2 sample under ``root/gld`` and its shards under ``root/tfrec``; returns the shard folder."""
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
