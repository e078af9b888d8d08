"""Kaggle build kernel: install landmark-kaggle from the attached wheel, then write TFRecord shards.

The shards, label_map.csv, manifest.json and dataset-metadata.json land in
./tfrec, ready to save as the dataset the training kernel attaches.
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
cmd = [sys.executable, "-m", "tfrec_builder.cli", "write",
       os.path.join(INPUT, "landmark-recognition-2021"), "--out", "tfrec"]
sys.exit(subprocess.run(cmd, env=env).returncode)
