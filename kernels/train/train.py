"""Kaggle training kernel: install landmark-kaggle from the attached wheel, then train on the shard dataset.

Training resumes from its last checkpoint in the working folder and stops
cleanly before Kaggle's session limit (session.time_budget); the model folder it
writes is what `landmark-kaggle kernels bundle --model` packs for submission.
"""

import os
import sys

from prelude import INPUT, run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("landmark_kaggle.cli", "train", "--data", os.path.join(INPUT, "landmark-kaggle-tfrec"),
             "--out", "model", "--set", "runtime.strategy=auto", "--set", "session.time_budget=8h30m"))
