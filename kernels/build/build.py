"""Kaggle build kernel: install landmark-kaggle from the attached wheel, then write TFRecord shards.

The competition folder is found by what it holds (sample_submission.csv and
test/), in whatever layout Kaggle mounts it. The shards, label_map.csv,
manifest.json and dataset-metadata.json land in ./tfrec, ready to save as the
dataset the training kernel attaches.
"""

import sys

from prelude import one, run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("tfrec_builder.cli", "write", one("competition"), "--out", "tfrec"))
