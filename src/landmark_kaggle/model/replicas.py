"""Inference on every visible GPU: one network mirrored on each device, each batch split between them.

Kaggle's "GPU T4 ×2" has two GPUs; a network built on one leaves the other
idle. Every path that runs a network over batches of images for inference
(``predict``, ``embed-index``, the competition-index embedding and
``tfrec-builder embed``) builds it under ``replicas().scope()`` and calls it
through ``replicas().runner(fn)``:

* one device (no GPU, or one): ``fn`` runs as a ``tf.function``, as before;
* several: a ``tf.distribute.MirroredStrategy`` over them holds one copy of
  the weights per device; a batch of B images is cut into equal contiguous
  slices, one per device (the last row repeated to fill the last slice), the
  slices run at once in one graph, and the results are put back together in
  order and trimmed to B rows. Nothing is reduced across devices, so each row
  is computed exactly as on one device, only in a smaller batch.

``LANDMARK_INFER_DEVICES`` chooses the devices (read once per process, when the
first network is built):

* ``auto`` (default): every visible GPU when there are two or more, else one device;
* ``1``: one device even when there are several GPUs;
* ``cpu:N``: N logical CPU devices (tests and benchmarks: the two-GPU path
  rehearsed on a CPU). TensorFlow must not have initialised its devices yet, so
  set it before the process starts. The N devices share the same cores: this
  shows the split is right, not that it is faster.

``benchmarks/infer_devices.py`` measured this against one worker process per
device (benchmarks/RESULTS.md, "Two inference devices").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import numpy as np

from landmark_kaggle.errors import UserError

ENV = "LANDMARK_INFER_DEVICES"
_CACHE: dict[str, Replicas] = {}


def parse_spec(text: str) -> tuple[str, int | None]:
    """``auto`` -> ("auto", None), ``1`` -> ("one", 1), ``cpu:4`` -> ("cpu", 4); a UserError for anything else."""
    text = str(text).strip().lower()
    if text in ("", "auto"):
        return "auto", None
    if text in ("1", "one"):
        return "one", 1
    kind, _, count = text.partition(":")
    if kind == "cpu" and count.isdigit() and int(count) >= 1:
        return "cpu", int(count)
    raise UserError(f"{ENV}={text!r}: use auto (every GPU when there are two or more), 1 (one device) "
                    "or cpu:N (N logical CPU devices, for tests)")


def _split_cpu(n: int) -> list[str]:
    """Names of n logical CPU devices, configuring them if TensorFlow has not initialised its devices yet."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    have = tf.config.get_logical_device_configuration(cpu)
    if not have or len(have) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            raise UserError(f"{ENV}=cpu:{n}: TensorFlow has already set up its devices in this process "
                            f"({len(have or [1])} CPU device(s)); set {ENV} before the process starts") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


class Replicas:
    """The devices inference runs on; ``count`` is 1 or the number of mirrored devices."""

    def __init__(self, devices: list[str] | None = None):
        import tensorflow as tf

        self.devices = list(devices or [])
        self.strategy = tf.distribute.MirroredStrategy(devices=self.devices) if len(self.devices) > 1 else None
        self.count = len(self.devices) if self.strategy else 1

    def scope(self):
        """Build (and load) the network under this, so each device holds its own copy of the weights."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def runner(self, fn: Callable) -> Callable[[object], tuple[np.ndarray, ...]]:
        """``fn``: a float32 batch tensor -> a tuple of [B, ...] tensors. Returns batch (numpy or tensor) -> the
        tuple as float32 numpy, rows in the batch's order, the batch split over the devices; its ``traces()``
        counts the graphs traced so far."""
        import tensorflow as tf

        if self.strategy is None:
            traced = {}

            def run_one(images):
                x = tf.convert_to_tensor(images, tf.float32)
                # One trace a network: its signature leaves the batch size open, so the probe image, the full
                # batches and the short last one run the same graph (traced per shape, each load paid 2-3).
                key = tuple(x.shape[1:])
                if key not in traced:
                    traced[key] = tf.function(fn, input_signature=[tf.TensorSpec([None, *key], tf.float32)])
                return tuple(np.asarray(o, np.float32) for o in traced[key](x))
            run_one.traces = lambda: sum(f.experimental_get_tracing_count() for f in traced.values())
            return run_one

        strategy, n = self.strategy, self.count

        @tf.function(reduce_retracing=True)
        def step(dist):
            return strategy.run(fn, args=(dist,))

        def run_split(images):
            x = tf.convert_to_tensor(images, tf.float32)
            rows = int(x.shape[0])
            if rows == 0:
                raise ValueError("an empty batch")
            per = -(-rows // n)
            # Equal slices keep one trace per batch size; the filler rows are cut off again below.
            if per * n > rows:
                x = tf.concat([x, tf.repeat(x[-1:], per * n - rows, axis=0)], axis=0)
            # Each slice is copied to its replica's device (the function runs under that device's scope).
            dist = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.identity(x[ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per]))
            out = step(dist)
            out = out if isinstance(out, tuple | list) else (out,)
            # experimental_local_results lists the replicas in device order: slice k's rows come k-th.
            return tuple(np.concatenate([np.asarray(v, np.float32) for v in strategy.experimental_local_results(o)])
                         [:rows] for o in out)
        run_split.traces = step.experimental_get_tracing_count
        return run_split


def replicas() -> Replicas:
    """This process's inference devices (``LANDMARK_INFER_DEVICES``), made once: every network built for
    inference shares them."""
    spec = os.environ.get(ENV, "auto")
    if spec not in _CACHE:
        import tensorflow as tf

        kind, count = parse_spec(spec)
        if kind == "cpu":
            devices = _split_cpu(count)
        elif kind == "one":
            devices = []
        else:
            # Logical GPUs: Kaggle's T4 ×2 lists two; a machine without GPUs, or with one, gets one device.
            gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
            devices = gpus if len(gpus) > 1 else []
        _CACHE[spec] = Replicas(devices)
    return _CACHE[spec]
