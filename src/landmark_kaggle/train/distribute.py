"""Everything that differs between the TensorFlow and JAX backends once Keras runs: devices, replicas, precision.

``setup_runtime`` returns a ``Runtime``: the trainer builds, compiles and fits
inside ``runtime.scope()`` and asks it the few questions whose answers depend
on the backend (is this the writing process, compile with XLA, sync the step's
state before a checkpoint). The backend itself was chosen before Keras loaded
(``backend.choose_backend``).

TensorFlow (``tf.distribute``): ``auto`` picks a TPU when one answers (and
fails fast when none does: no long wait), MirroredStrategy over several GPUs,
MultiWorkerMirroredStrategy when ``TF_CONFIG`` names a cluster, otherwise the
default (one-device) strategy on the GPU or the CPU.

JAX (``keras.distribution.DataParallel``): every device of one platform, the
global batch split over them and the weights replicated; batch statistics are
over the global batch, so N devices compute what one device would. ``tpu``
fails at once when JAX sees no TPU, unless ``runtime.devices=cpu:N`` says the
host devices stand in for it.

Precision ``auto`` (``auto_precision``, from the device facts): bfloat16 on a
TPU and on GPUs of compute capability 8.0 or more (A100, L4, H100: fast bf16,
no loss scaling needed); float16 on older GPUs (Kaggle's T4, 7.5), where Keras
wraps the optimizer in a LossScaleOptimizer; float32 on the CPU, where mixed
precision is far slower. XLA (``use_xla``) is on under JAX and for TensorFlow on
GPUs and TPUs, off for TensorFlow on the CPU. The policy is applied where the
network is built (``Runtime.policy()``), so nothing that resets Keras's global
state in between (``keras.backend.clear_session``) can drop it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import keras

from landmark_kaggle.config import PRECISIONS, STRATEGIES, parse_devices
from landmark_kaggle.errors import UserError
from landmark_kaggle.train.backend import check_backend


@dataclass
class Runtime:
    strategy: Any  # tf.distribute.Strategy under TensorFlow; None under JAX
    kind: str  # tpu | gpu | mirrored | multiworker | cpu
    precision: str
    replicas: int
    backend: str = "tensorflow"
    distribution: Any = None  # keras.distribution.DataParallel under JAX with several devices
    devices: list[str] = field(default_factory=list)
    note: str = ""  # e.g. "8 host devices stand in for the TPU"
    platform: str = "cpu"  # tpu | gpu | cpu: what the steps run on (a stand-in's host devices count as tpu)

    @property
    def is_chief(self) -> bool:
        """The one process that writes outputs (worker 0, or the only process)."""
        if self.backend == "jax":
            import jax

            return jax.process_index() == 0
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or self.kind != "multiworker":
            return True
        return resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0
                                                          and "chief" not in resolver.cluster_spec().as_dict())

    @property
    def jit_compile(self) -> bool:
        return use_xla(self.backend, self.platform)

    def policy(self):
        """The precision, set as Keras's global dtype policy for the block: build the network inside it."""
        from landmark_kaggle.model.network import dtype_policy

        return dtype_policy(self.precision)

    def scope(self):
        """Build, compile and fit inside this."""
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def training_model(self, model: keras.Model) -> keras.Model:
        """The model the trainer fits: the same network, with what this strategy needs around it."""
        if self.kind == "multiworker":
            return _ReplicaAxisModel(model.inputs, model.outputs, name=model.name)
        return model

    def before_fit(self, model: keras.Model) -> None:
        if self.kind == "multiworker":
            # Keras 3.15's fit/evaluate first MEAN-reduce one input batch for a symbolic build, which
            # MultiWorkerMirroredStrategy cannot do for a nested batch. With no strategy recorded on the
            # model Keras builds while tracing instead; fit runs inside the strategy's scope, so the
            # steps are distributed all the same.
            model._distribute_strategy = None

    def sync(self, model: keras.Model) -> None:
        """Make the variables hold one value each, the last step's: before validation and every checkpoint.

        JAX keeps the training state apart from the variables during an epoch. Under tf.distribute each
        replica updates its own copy of BatchNorm's moving statistics from its own share of the batch
        (Keras 3 does not aggregate them), so the copies drift apart: a model saved from replica 0 would
        not be the one that validated on replica 1, and a resume would lose the others. Every float
        non-trainable variable is set to its mean over the replicas, as Keras 2's ON_READ mean did.
        """
        if self.backend == "jax":
            model.jax_state_sync()
        elif self.strategy is not None and self.replicas > 1:
            _average_over_replicas(self.strategy, model)

    def describe(self) -> str:
        where = f"{self.replicas} {self.kind} replica(s)" if self.backend == "tensorflow" else \
            f"{len(self.devices)} {self.kind} device(s)"
        return f"{self.backend} {self.kind}, {where}, {self.precision}" + (f"; {self.note}" if self.note else "")


def _average_over_replicas(strategy, model: keras.Model) -> None:
    import tensorflow as tf

    variables = [v.value for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if not variables:
        return

    def mean_of_copies():
        # Inside a replica, each variable reads as that replica's copy; the all-reduce spans every worker.
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN,
                                                              [tf.identity(v) for v in variables])

    reduced = strategy.run(mean_of_copies)
    for var, mean in zip(variables, reduced, strict=True):
        for copy, value in zip(strategy.experimental_local_results(var), strategy.experimental_local_results(mean),
                               strict=True):
            copy.assign(value)


class _ReplicaAxisModel(keras.Model):
    """The functional model, with step logs of shape [1] instead of scalars.

    Keras 3.15 reduces MultiWorkerMirroredStrategy step logs with ``axis=0``,
    which a scalar does not have; one length-1 axis reduces to the same scalar.
    Used for training only: the saved model folder holds the plain functional copy.
    """

    def train_step(self, data):
        return {k: keras.ops.reshape(v, (1,)) for k, v in super().train_step(data).items()}

    def test_step(self, data):
        return {k: keras.ops.reshape(v, (1,)) for k, v in super().test_step(data).items()}


# -- TensorFlow -----------------------------------------------------------------------------------------------------

def _find_tpu():
    """A connected TPU resolver, or None at once when the machine has none."""
    import tensorflow as tf

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


def strategy_kind(name: str, *, tpu: bool, cluster: bool, gpus: int) -> str:
    """The tf.distribute strategy ``--strategy name`` takes, from the facts: a TPU answered, TF_CONFIG names a
    cluster, the GPU count. ``auto``: the TPU, else the cluster, else MirroredStrategy over several GPUs (Kaggle's
    T4 ×2), else the one device."""
    if name not in STRATEGIES:
        raise UserError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name in ("auto", "tpu") and tpu:
        return "tpu"
    if name == "tpu":
        raise UserError("--strategy tpu: no TPU found (on Kaggle, choose the TPU accelerator; Kaggle's TPU VM "
                        "image reaches it through JAX: runtime.backend=jax)")
    if name == "multiworker" or (name == "auto" and cluster):
        if not cluster:
            raise UserError("--strategy multiworker needs TF_CONFIG with a cluster and this worker's task")
        return "multiworker"
    if name == "mirrored" or (name == "auto" and gpus > 1):
        return "mirrored"
    return "gpu" if gpus else "cpu"


def get_strategy(name: str = "auto"):
    """The tf.distribute strategy and its kind for ``--strategy`` (``strategy_kind`` decides)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    resolver = _find_tpu() if name in ("auto", "tpu") else None
    cluster = _tf_config_has_cluster() if name in ("auto", "multiworker") else False
    # Physical devices, not logical ones: listing logical devices initialises TensorFlow's context, after which
    # MultiWorkerMirroredStrategy can no longer configure its collective ops ("must be configured at startup").
    gpus = tf.config.list_physical_devices("GPU")
    kind = strategy_kind(name, tpu=resolver is not None, cluster=cluster, gpus=len(gpus))
    if kind == "tpu":
        return tf.distribute.TPUStrategy(resolver), kind
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy(), kind
    if kind == "mirrored":
        # On a CPU-only machine this mirrors over the logical CPU devices, if several were configured.
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices), kind
    return tf.distribute.get_strategy(), kind


def split_cpu(n: int) -> None:
    """Split the CPU into ``n`` logical TensorFlow devices (before TensorFlow initialises its devices)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def _tf_gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each GPU TensorFlow sees, e.g. [(7, 5), (7, 5)] on Kaggle's T4 ×2."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        caps.append(tuple(int(c) for c in cap) if cap else (0, 0))
    return caps


# -- JAX ------------------------------------------------------------------------------------------------------------

def jax_devices(strategy: str = "auto", devices: str = "auto") -> tuple[list, str, str]:
    """(devices, kind, note) JAX trains on for ``runtime.strategy`` and ``runtime.devices``."""
    import jax

    if strategy in ("mirrored", "multiworker"):
        raise UserError(f"runtime.strategy = {strategy} is a TensorFlow strategy; under JAX use auto (every device "
                        "of the default platform), tpu or cpu, and runtime.devices to choose the devices")
    kind, count = parse_devices(devices)
    note = ""
    if kind == "auto":
        kind = {"tpu": "tpu", "cpu": "cpu"}.get(strategy) or jax.default_backend()
        kind = "gpu" if kind in ("cuda", "rocm") else kind
    elif strategy == "tpu" and kind != "tpu":
        if kind != "cpu":
            raise UserError(f"runtime.strategy = tpu but runtime.devices = {devices}: only host devices "
                            "(cpu or cpu:N) may stand in for a TPU")
        note = f"runtime.devices = {devices}: host devices stand in for the TPU"
    elif strategy == "cpu" and kind != "cpu":
        raise UserError(f"runtime.strategy = cpu but runtime.devices = {devices}")
    try:
        found = jax.devices(kind)
    except RuntimeError:
        found = []
    if not found:
        if kind == "tpu":
            raise UserError("runtime.strategy = tpu: JAX sees no TPU (on Kaggle, choose a TPU accelerator; to "
                            "rehearse on this machine, set runtime.devices=cpu:8)")
        raise UserError(f"runtime.devices = {devices}: JAX sees no {kind} device")
    if count and len(found) != count:
        raise UserError(f"runtime.devices = {devices}, but JAX has {len(found)} host device(s): the count is set "
                        "when JAX starts (landmark_kaggle.train.backend.choose_backend, before Keras is imported)")
    return found, kind, note


def _jax_runtime(strategy: str, precision: str, devices: str) -> Runtime:
    # tf.data feeds JAX from the host: keep TensorFlow off the accelerators, or it takes their memory.
    import tensorflow as tf

    with contextlib.suppress(RuntimeError, ValueError):
        tf.config.set_visible_devices([], "GPU")
    found, kind, note = jax_devices(strategy, devices)
    platform = "tpu" if strategy == "tpu" else kind
    caps = [_capability(getattr(d, "compute_capability", "")) for d in found] if kind == "gpu" else []
    policy = resolve_precision(precision, platform, caps)
    distribution = keras.distribution.DataParallel(devices=found) if len(found) > 1 else None
    return Runtime(strategy=None, kind=kind, precision=policy, replicas=len(found), backend="jax",
                   distribution=distribution, devices=[str(d) for d in found], note=note, platform=platform)


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = str(text or "0.0").partition(".")
    return (int(major or 0), int(minor or 0)) if major.isdigit() else (0, 0)


# -- both -----------------------------------------------------------------------------------------------------------

def auto_precision(platform: str, capabilities=()) -> str:
    """``precision=auto`` from the device facts: ``platform`` (tpu | gpu | cpu) and, on GPUs, each one's compute
    capability as (major, minor). bf16 needs no loss scaling and runs fast on TPUs and on GPUs from 8.0 (A100,
    L4, H100); older GPUs (T4: 7.5) have fast float16 only, and Keras adds loss scaling to it."""
    if platform == "tpu":
        return "mixed_bfloat16"
    if platform == "gpu":
        caps = [tuple(c) for c in capabilities]
        return "mixed_bfloat16" if caps and min(caps) >= (8, 0) else "mixed_float16"
    return "float32"


def use_xla(backend: str, platform: str) -> bool:
    """XLA (``jit_compile``): always under JAX (without it Keras runs op by op); for TensorFlow on GPUs and TPUs,
    not on the CPU, where TensorFlow's XLA compiles slowly and runs no faster (DESIGN.md)."""
    return backend == "jax" or platform in ("gpu", "tpu")


def resolve_precision(precision: str, platform: str, capabilities=None) -> str:
    """``runtime.precision`` for ``platform`` (tpu | gpu | cpu); ``auto`` asks ``auto_precision``, reading the GPUs'
    compute capabilities from TensorFlow when none are given."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if platform == "gpu" and capabilities is None:
        capabilities = _tf_gpu_capabilities()
    return auto_precision(platform, capabilities or ())


def setup_runtime(strategy: str = "auto", precision: str = "auto", devices: str = "auto", *,
                  backend: str = "auto", announce: bool = False, require_accelerator: bool = False) -> Runtime:
    """Pick devices, strategy and precision on the backend Keras runs on; the trainer builds under ``policy()``.

    ``announce`` prints one line saying what was found and chosen; ``require_accelerator`` refuses the CPU.
    """
    from landmark_kaggle.config import RuntimeConfig

    runtime = RuntimeConfig(backend=backend, devices=devices, strategy=strategy, precision=precision)
    if check_backend(runtime) == "jax":
        rt = _jax_runtime(strategy, precision, devices)
    else:
        if parse_devices(devices)[0] != "auto":
            raise UserError(f"runtime.devices = {devices} chooses JAX devices; under TensorFlow leave it at auto "
                            "and choose with runtime.strategy")
        strat, kind = get_strategy(strategy)
        import tensorflow as tf

        platform = "tpu" if kind == "tpu" else ("gpu" if tf.config.list_logical_devices("GPU") else "cpu")
        policy = resolve_precision(precision, platform)
        rt = Runtime(strategy=strat, kind=kind, precision=policy, replicas=int(strat.num_replicas_in_sync),
                     platform=platform)
    if require_accelerator and rt.platform == "cpu":
        raise UserError(f"runtime.require_accelerator: no TPU or GPU found ({rt.describe()}); on Kaggle, choose "
                        "the accelerator \"TPU v5e-8\" or \"GPU T4 x2\" (kernels push train --accelerator "
                        "TpuV5E8 | NvidiaTeslaT4)")
    # Also set globally, for code that builds outside Runtime.policy(); the trainer builds inside it.
    keras.mixed_precision.set_global_policy(rt.precision)
    if announce:
        print(f"runtime: strategy {strategy} -> {rt.describe()}", flush=True)
    return rt


def steps_per_execution(requested: int, platform: str, *divides: int) -> int:
    """Train steps one compiled call runs: ``runtime.steps_per_execution``, or 0 = auto: 32 on a TPU, where each
    call's host round trip is dear, else 1. Lowered to the largest count that divides every non-zero number in
    ``divides`` (steps per epoch, the checkpoint interval, a resumed epoch's first step): Keras runs whole calls,
    so one must end exactly at each of those. (The trainer rounds a data-sized epoch to whole calls first.)"""
    wanted = requested or (32 if platform == "tpu" else 1)
    return max(n for n in range(1, wanted + 1) if all(d % n == 0 for d in divides if d))


def global_batch(cfg, replicas: int) -> tuple[int, float]:
    """The global batch and the learning-rate factor.

    ``train.batch_size`` is global; with ``train.scale_batch_with_replicas`` it
    is per replica instead and the global batch grows with the replica count.
    When ``optim.scale_lr_with_replicas``, the rate follows the global batch k
    times the configured one by ``optim.lr_scaling``: sqrt (× √k, the square-root
    rule for Adam-type optimizers, with the warm-up kept) or linear (× k, the rule
    for SGD, which overshoots with AdamW at k = 8).
    """
    t = cfg.train
    batch = t.batch_size * (replicas if t.scale_batch_with_replicas else 1)
    if batch % replicas:
        raise UserError(f"train.batch_size = {t.batch_size}: the global batch {batch} does not split "
                        f"evenly over {replicas} replicas")
    ratio = batch / t.batch_size
    if not cfg.optim.scale_lr_with_replicas:
        return batch, 1.0
    return batch, (ratio if cfg.optim.lr_scaling == "linear" else ratio ** 0.5)
