"""Kaggle build kernel 2 (CPU, one run per part): write part PART of the cleaned TFRecord shards.

`tfrec-builder write --kaggle` finds the competition folder and clean/outliers.csv
(the build-embed kernel's output) by what they hold and writes part PART of
the build, at most 19 GB so the kernel's output fits Kaggle's 20 GB, into
tfrec/<slug>-part-PART/: shards, label_map.csv, manifest.json and
dataset-metadata.json. Part 1's log and tfrec/parts.json say how many parts
there are; `landmark-kaggle kernels push build-write --part k` renders this
kernel for part k (its own slug, so every part's output stays attachable).
"""

import sys

from prelude import run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

PART = "1"  # `landmark-kaggle kernels push build-write --part k` rewrites this line

sys.exit(run("tfrec_builder.cli", "write", "--kaggle", "--part", PART,
             "--dataset-id", "YOUR_KAGGLE_USERNAME/gldv2-tfrec-512"))
