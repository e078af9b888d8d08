"""Shared pytest setup: quiet TensorFlow, keep Keras on the CPU, and tiny GLDv2 folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
