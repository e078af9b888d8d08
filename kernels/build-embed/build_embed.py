"""Kaggle build kernel 1 (GPU, internet on): embed every training image with an ImageNet backbone, then clean.

`tfrec-builder embed --kaggle` finds the competition folder by what it holds,
takes the backbone's ImageNet weights from an attached file of the name Keras
uses (efficientnetb7_notop.h5) or downloads them, continues the store of this
kernel's previous version when `landmark-kaggle kernels push build-embed
--continue` attached it, and stops cleanly at its time budget (11 h of the
12 h session). Once the store is complete it runs the poster's per-class
DBSCAN (eps 0.33, min_samples 2, cosine). Output: embeddings/ (1.58M x 2560
float16, 8.1 GB) and clean/ (outliers.csv, report.json, contact sheets).
"""

import sys

from prelude import run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("tfrec_builder.cli", "embed", "--kaggle", "--backend", "keras:EfficientNetB7", "--image-size", "600"))
