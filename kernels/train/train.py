"""Kaggle training kernel: install landmark-kaggle from the attached wheel, then train on the shard dataset.

Every attached shard folder (all parts of one build, found by what they hold
in whatever layout Kaggle mounts them) is trained on. Training resumes from its
last checkpoint in the working folder and stops cleanly before Kaggle's session
limit (session.time_budget); the model folder it writes is what
`landmark-kaggle kernels bundle --model` packs for submission.
"""

import sys

from prelude import every, run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("landmark_kaggle.cli", "train", "--data", *every("shards"),
             "--out", "model", "--set", "runtime.strategy=auto", "--set", "session.time_budget=8h30m"))
