"""The trainer's step-end callback, and the callback list that hands it each step's logs unread.

Keras 3.15's ``CallbackList`` converts every compiled call's logs to Python
floats before any callback sees them (``pythonify_logs`` in
``on_train_batch_end``): a device-to-host read that waits for the call to
finish, so the host cannot queue the next call while the device works. Under
JAX it moves that read to a thread when every callback declares ``async_safe``,
but it still reads every call, and a checkpoint written from that thread would
race the training loop for the model's state. ``LazyLogsList`` hands the logs
on as the device values they are, and ``StepWatch`` reads them on the main
thread only every ``session.log_every_steps`` steps (loss display, step timing)
and when it checkpoints (the partial epoch's metrics); the epoch's final
metrics come from ``on_epoch_end``, which Keras reads once a ``fit``. Counting
steps, the progress bar and the time budget need no device value.
"""

from __future__ import annotations

import time

import keras

from landmark_kaggle.evaluate.metrics import TOP_K

METRIC_COLUMNS = ["loss"] + [f"top{k}" for k in TOP_K]


class LazyLogsList(keras.callbacks.CallbackList):
    """Keras's callback list, less the per-call conversion of the step logs: each callback reads what it needs.

    Every callback in it must treat the logs of ``on_train_batch_end`` as device values (``read_logs``);
    the epoch-end and train-end logs are converted by Keras as usual (once per ``fit``).
    """

    def on_train_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=logs)


def lazy_callbacks(callbacks: list, model: keras.Model, *, epochs: int, steps: int) -> LazyLogsList:
    """What ``fit(callbacks=...)`` gets: a ready list (Keras then adds nothing), with the History ``fit`` adds."""
    return LazyLogsList(callbacks, add_history=True, add_progbar=False, model=model,
                        verbose=0, epochs=epochs, steps=steps)


def read_logs(logs) -> dict:
    """The metric columns of one call's logs as floats: waits for that call to end (a host-device sync)."""
    return {k: float(v) for k, v in (logs or {}).items() if k in METRIC_COLUMNS}


def crosses(before: int, after: int, every: int) -> bool:
    """Whether steps ``before`` → ``after`` passed a multiple of ``every`` (0: never)."""
    return bool(every) and after // every > before // every


class StepWatch(keras.callbacks.Callback):
    """Counts steps, checkpoints every N steps, enforces the time budget, drives the progress bar.

    Keras calls it once per compiled call (``steps_per_execution`` steps), with ``batch`` the call's last
    step within this ``fit``. Only the main thread calls it (``LazyLogsList`` dispatches nothing to a
    thread), so a checkpoint sees the state of the step it counts.
    """

    def __init__(self, trainer):
        super().__init__()
        self.t = trainer
        self.unread = 0  # calls ended since the logs were last read: the host may be this far ahead of the devices
        self.read_at = time.monotonic()

    def on_train_begin(self, logs=None):
        self.unread, self.read_at = 0, time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        t = self.t
        done = t.fit_start + batch + 1 - t.step_in_epoch
        before = t.global_step
        t.step_in_epoch += done
        t.global_step += done
        self.unread += 1
        now = time.monotonic()
        # Host time of a call: the device's own when the host waits for it (the first call: tracing too).
        t.slowest_step = max(t.slowest_step, now - t.last_step_end)
        t.last_step_end = now
        if t.bar is not None:
            t.bar.update(done)
        session = t.cfg.session
        mid_epoch = t.step_in_epoch < t.steps_per_epoch  # at the epoch's end on_epoch_end has the metrics
        checkpoint = mid_epoch and crosses(before, t.global_step, session.checkpoint_every_steps)
        if checkpoint or (mid_epoch and crosses(before, t.global_step, session.log_every_steps)):
            self._read(logs)
        if checkpoint:
            t.save_checkpoint(partial_logs=t.epoch_logs())
        if t.out_of_time(pending_calls=self.unread):
            self.model.stop_training = True
            t.stopped = "time budget"

    def _read(self, logs) -> None:
        t = self.t
        t.last_logs = read_logs(logs)
        now = time.monotonic()
        # Once the read returns the devices have finished every call so far: the mean call time since the
        # last read is the devices' (the host's own intervals are shorter while it runs ahead).
        t.slowest_step = max(t.slowest_step, (now - self.read_at) / self.unread)
        self.unread, self.read_at, t.last_step_end = 0, now, now
        self._show_loss()

    def on_epoch_end(self, epoch, logs=None):
        # Keras has read the epoch's metrics (the running means after its last call) to the host already.
        self.t.last_logs = read_logs(logs)
        self.unread = 0
        self._show_loss()

    def _show_loss(self) -> None:
        t = self.t
        if t.bar is not None:
            t.bar.set_postfix(epoch=t.epoch + 1, loss=f"{t.last_logs.get('loss', float('nan')):.3f}")
