"""Kaggle submission kernel (internet off): install landmark-kaggle from the attached wheel, then predict.

Everything else lives in the package: `landmark-kaggle predict --kaggle` finds the
model, the retrieval index and the test images among the inputs by what they
hold and writes submission.csv into the working folder (landmark_kaggle.paths).
"""

import sys

from prelude import run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("landmark_kaggle.cli", "predict", "--kaggle"))
