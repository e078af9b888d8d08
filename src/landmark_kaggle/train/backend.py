"""Which Keras backend and which devices a training process uses, decided once, before Keras is imported.

Keras reads ``KERAS_BACKEND`` at its first import and JAX reads ``XLA_FLAGS``
when it starts its CPU client, so ``choose_backend`` runs first thing in the
``train`` command and sets both from ``runtime.backend`` and
``runtime.devices``:

- ``runtime.backend=auto`` takes JAX when a TPU is visible to JAX (Kaggle's TPU
  VM image, where TensorFlow cannot reach the TPU) or when ``runtime.devices``
  names JAX devices explicitly, and TensorFlow otherwise; it says which and why.
- ``runtime.devices=cpu:N`` splits the host into N JAX devices. It is how a
  TPU run is rehearsed on a machine without one (N=8 for a v3-8 or v5e-8):
  ``runtime.strategy=tpu`` then trains on those N host devices, and says so.
  Without it a TPU request never falls back to the CPU.

Nothing here imports Keras or TensorFlow; JAX is imported only to look for a
TPU, and only when a TPU runtime (``libtpu``) is installed, so a GPU machine
never has JAX take its memory just to be told there is no TPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass

from landmark_kaggle.config import parse_devices
from landmark_kaggle.errors import UserError

HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # tensorflow | jax
    reason: str  # one line: what was found and why this backend


def keras_backend_in_use() -> str | None:
    """The backend of an already imported Keras, or None when Keras has not been imported yet."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    return keras.backend.backend()


def tpu_visible_to_jax() -> tuple[bool, str]:
    """(found, what was seen), without touching a GPU: JAX is only asked when libtpu is installed."""
    if importlib.util.find_spec("jax") is None:
        return False, "JAX is not installed"
    if importlib.util.find_spec("libtpu") is None:
        return False, "no TPU runtime (libtpu) installed"
    import jax

    try:
        devices = jax.devices("tpu")
    except RuntimeError as exc:
        return False, f"JAX found no TPU ({str(exc).splitlines()[0][:120]})"
    return bool(devices), f"JAX sees {len(devices)} TPU device(s) ({devices[0].device_kind})"


def _set_host_devices(count: int) -> None:
    flags = re.sub(rf"{HOST_DEVICES_FLAG}=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{HOST_DEVICES_FLAG}={count}"])


def choose_backend(runtime, *, announce: bool = True) -> BackendChoice:
    """Apply ``runtime.backend`` / ``runtime.devices`` (a RuntimeConfig) to this process; call before Keras loads.

    When Keras is already imported, its backend stands; asking for another one
    is an error that says how to start over.
    """
    wanted = runtime.backend
    kind, count = parse_devices(runtime.devices)
    in_use = keras_backend_in_use()
    if in_use is not None:
        if wanted not in ("auto", in_use):
            raise UserError(f"runtime.backend = {wanted!r}, but Keras was already imported with the {in_use} "
                            "backend in this process; start a new one (the train command chooses before importing "
                            f"Keras) or set KERAS_BACKEND={wanted}")
        choice = BackendChoice(in_use, f"Keras was already imported with the {in_use} backend")
    elif wanted != "auto":
        choice = BackendChoice(wanted, f"runtime.backend = {wanted}")
    elif kind != "auto":
        choice = BackendChoice("jax", f"runtime.devices = {runtime.devices} names JAX devices")
    else:
        found, seen = tpu_visible_to_jax()
        choice = BackendChoice("jax" if found else "tensorflow", seen)
    if choice.backend == "jax" and in_use is None:
        if importlib.util.find_spec("jax") is None:
            raise UserError("runtime.backend resolves to jax, but JAX is not installed "
                            "(pip install 'jax[tpu]' on a TPU VM, 'jax' for the CPU)")
        if kind == "cpu":
            # Before JAX starts: its CPU client reads the device count once.
            os.environ["JAX_PLATFORMS"] = "cpu"
            if count:
                _set_host_devices(count)
    if in_use is None:
        os.environ["KERAS_BACKEND"] = choice.backend
    if announce:
        print(f"runtime: backend {wanted} -> {choice.backend} ({choice.reason})", flush=True)
    return choice


def check_backend(runtime) -> str:
    """The backend Keras runs on, after checking it is the one ``runtime.backend`` asks for."""
    in_use = keras_backend_in_use()
    if in_use is None:
        import keras

        in_use = keras.backend.backend()
    if runtime.backend not in ("auto", in_use):
        raise UserError(f"runtime.backend = {runtime.backend!r}, but Keras runs on {in_use}: call "
                        "landmark_kaggle.train.backend.choose_backend(cfg.runtime) before anything imports Keras "
                        "(the train command does)")
    return in_use
