"""Kaggle build kernel 2 (CPU, internet off, one run per part): write part PART of the cleaned TFRecord shards.

The competition folder and the build-embed kernel's clean/ (outliers.csv,
report.json) are found by what they hold. Part PART of the build, at most
19 GB so the kernel's output fits Kaggle's 20 GB, lands in
tfrec/<slug>-part-PART/ (shards, label_map.csv, manifest.json,
dataset-metadata.json) beside tfrec/parts.json, the build's table of parts.
`landmark-kaggle kernels push build-write --part k` renders this kernel for
part k, under its own slug, so every part's output stays attachable; part 1's
log and parts.json say how many parts there are.
"""

import os
import sys

from prelude import one, run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

PART = "1"  # `landmark-kaggle kernels push build-write --part k` rewrites this line

sys.exit(run("tfrec_builder.cli", "write", one("competition"), "--outliers", os.path.join(one("clean"), "outliers.csv"),
             "--out", "tfrec", "--part", PART, "--dataset-id", "YOUR_KAGGLE_USERNAME/gldv2-tfrec-512"))
