"""Kaggle submission kernel (internet off): install landmark-kaggle from the attached wheel, then predict.

Everything else lives in the package: `landmark-kaggle predict --kaggle` finds the
model, the retrieval index and the test images under the Kaggle input root and
writes submission.csv into the working root (landmark_kaggle.paths).
"""

import glob
import os
import subprocess
import sys
import tempfile

# Kaggle starts scripts in the working folder, beside ../input; tests move both roots.
INPUT = os.environ.get("LANDMARK_KAGGLE_INPUT", os.path.join("..", "input"))

wheels = sorted(glob.glob(os.path.join(INPUT, "*", "landmark_kaggle-*.whl")))
if len(wheels) != 1:
    sys.exit(f"expected one landmark_kaggle wheel in a dataset under {INPUT}, found {wheels}")
# Kaggle's image has its own TensorFlow and Keras: install our code only, into a private folder.
target = tempfile.mkdtemp(prefix="landmark_kaggle_")
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                "--target", target, wheels[-1]], check=True)
env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p))
cmd = [sys.executable, "-m", "landmark_kaggle.cli", "predict", "--kaggle"]
sys.exit(subprocess.run(cmd, env=env).returncode)
