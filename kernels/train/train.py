"""Kaggle training kernel (TPU): install landmark-kaggle from the attached wheel, then train on the shard dataset.

Training resumes from its last checkpoint in the working folder and stops
cleanly before Kaggle's session limit (train.time_budget); the model folder it
writes is what `landmark-kaggle kernels bundle --model` packs for submission.
"""

import glob
import os
import subprocess
import sys
import tempfile

# Kaggle starts scripts in the working folder, beside ../input.
INPUT = os.environ.get("LANDMARK_KAGGLE_INPUT", os.path.join("..", "input"))

wheels = sorted(glob.glob(os.path.join(INPUT, "*", "landmark_kaggle-*.whl")))
if len(wheels) != 1:
    sys.exit(f"expected one landmark_kaggle wheel in a dataset under {INPUT}, found {wheels}")
target = tempfile.mkdtemp(prefix="landmark_kaggle_")
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                "--target", target, wheels[-1]], check=True)
env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p))
cmd = [sys.executable, "-m", "landmark_kaggle.cli", "train",
       "--data", os.path.join(INPUT, "landmark-kaggle-tfrec"), "--out", "model",
       "--set", "train.strategy=auto", "--set", "train.time_budget=8h30m"]
sys.exit(subprocess.run(cmd, env=env).returncode)
