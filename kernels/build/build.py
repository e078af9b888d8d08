"""Kaggle build kernel: install landmark-kaggle from the attached wheel, then write TFRecord shards.

The shards, label_map.csv, manifest.json and dataset-metadata.json land in
./tfrec, ready to save as the dataset the training kernel attaches.
"""

import os
import sys

from prelude import INPUT, run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("tfrec_builder.cli", "write", os.path.join(INPUT, "landmark-recognition-2021"), "--out", "tfrec"))
