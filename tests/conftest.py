"""Shared pytest setup: quiet TensorFlow, keep Keras on the CPU, and tiny GLDv2 folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

# The real GLDv2 test JPEGs live in the shared/ folder beside the checkout (CI lays a copy there too).
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "gldv2-test-images"
