"""Choose the tf.distribute strategy and the Keras precision policy for the machine at hand.

``auto`` picks a TPU when one answers (and fails fast when none does: no long
wait), MirroredStrategy over several GPUs, MultiWorkerMirroredStrategy when
``TF_CONFIG`` names a cluster, otherwise the default (one-device) strategy.
Precision ``auto`` is bf16 on TPU, fp16 on GPU (Keras then wraps the optimizer
in a LossScaleOptimizer) and float32 on CPU, where mixed precision is far
slower. The model must be built and compiled inside ``strategy.scope()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from landmark_kaggle.config import PRECISIONS, STRATEGIES
from landmark_kaggle.errors import UserError


@dataclass
class Runtime:
    strategy: tf.distribute.Strategy
    kind: str  # tpu | mirrored | multiworker | cpu
    precision: str
    replicas: int

    @property
    def is_chief(self) -> bool:
        """The one worker that writes outputs (worker 0, or the only process)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or self.kind not in ("multiworker",):
            return True
        return resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0
                                                          and "chief" not in resolver.cluster_spec().as_dict())


def _find_tpu():
    """A connected TPU resolver, or None at once when the machine has none."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError, RuntimeError):
        return None


def _tf_config_has_cluster() -> bool:
    try:
        cfg = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        raise UserError("TF_CONFIG is not valid JSON") from None
    return bool(cfg.get("cluster"))


def get_strategy(name: str = "auto") -> tuple[tf.distribute.Strategy, str]:
    """The strategy and its kind for ``--strategy``; see the module docstring for ``auto``."""
    if name not in STRATEGIES:
        raise UserError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name in ("auto", "tpu"):
        resolver = _find_tpu()
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver), "tpu"
        if name == "tpu":
            raise UserError("--strategy tpu: no TPU found (on Kaggle, choose the TPU accelerator)")
    if name == "multiworker" or (name == "auto" and _tf_config_has_cluster()):
        if not _tf_config_has_cluster():
            raise UserError("--strategy multiworker needs TF_CONFIG with a cluster and this worker's task")
        return tf.distribute.MultiWorkerMirroredStrategy(), "multiworker"
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # On a CPU-only machine this mirrors over the logical CPU devices, if several were configured.
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices), "mirrored"
    return tf.distribute.get_strategy(), "cpu" if not gpus else "gpu"


def resolve_precision(precision: str, kind: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if kind == "tpu":
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def setup_runtime(strategy: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the strategy, then set Keras's global dtype policy to match it."""
    strat, kind = get_strategy(strategy)
    policy = resolve_precision(precision, kind)
    keras.mixed_precision.set_global_policy(policy)
    return Runtime(strategy=strat, kind=kind, precision=policy, replicas=int(strat.num_replicas_in_sync))


def split_cpu(n: int) -> None:
    """Split the CPU into ``n`` logical devices (must run before TensorFlow initialises its devices)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def global_batch(cfg, replicas: int) -> tuple[int, float]:
    """The global batch and the learning-rate factor (linear scaling with the batch).

    ``train.batch_size`` is global; with ``train.scale_batch_with_replicas`` it
    is per replica instead and the global batch grows with the replica count.
    The rate scales by global / configured batch when ``optim.scale_lr_with_replicas``.
    """
    t = cfg.train
    batch = t.batch_size * (replicas if t.scale_batch_with_replicas else 1)
    if batch % replicas:
        raise UserError(f"train.batch_size = {t.batch_size}: the global batch {batch} does not split "
                        f"evenly over {replicas} replicas")
    factor = batch / t.batch_size if cfg.optim.scale_lr_with_replicas else 1.0
    return batch, factor
