"""The training loop: shards → model folder, with checkpoints, exact resume, a time budget, history and plots.

One Keras ``fit`` call per epoch, each over that epoch's own data stream
(``pipeline.build_dataset`` keyed by seed and epoch), so resuming at epoch e,
step k only skips k batches of epoch e. A checkpoint (weights + AdamW state +
position + the epoch's running metrics so far) is written at every epoch end
and every ``session.checkpoint_every_steps`` steps; ``resume=True`` continues
from it with the same epoch, step, optimizer state and learning rate (the
schedule is a function of the optimizer's step count). The partial epoch's
metrics are joined with the resumed part's, weighted by steps, so the history
reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from landmark_kaggle.config import Config
from landmark_kaggle.config_args import parse_duration
from landmark_kaggle.config_migrate import migrate_flat
from landmark_kaggle.data import pipeline
from landmark_kaggle.errors import UserError
from landmark_kaggle.fileio import atomic_write_json
from landmark_kaggle.model.network import build_model, init_from_model_dir, save_model_dir
from landmark_kaggle.train.callbacks import METRIC_COLUMNS, StepWatch, lazy_callbacks
from landmark_kaggle.train.distribute import Runtime, global_batch, setup_runtime, steps_per_execution
from landmark_kaggle.train.optim import compile_model
from landmark_kaggle.train.plots import plot_history
from landmark_kaggle.train.schedule import schedule_from_config

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
# The plots are redrawn after an epoch at most this often (and always when the run ends): three matplotlib
# figures cost ~0.8 s, next to an epoch of GLDv2 nothing, but a quarter of the quick dry-run's 30 short epochs.
PLOT_EVERY_SECONDS = 60.0
# Settings that may change between a run and its resumption; any other change makes the checkpoint invalid.
# embeddings.class_sample only steers train-embeddings, so it may differ from (or be missing in) an image checkpoint.
# The backend and the devices may change too (a checkpoint holds the same numbers on every one of them), and so
# may the initial weights, which a checkpoint replaces.
RESUMABLE_CHANGES = {"train.epochs", "session.time_budget", "session.checkpoint_every_steps", "embeddings.class_sample",
                     "runtime.backend", "runtime.devices", "model.weights", "runtime.require_accelerator",
                     "runtime.steps_per_execution", "session.log_every_steps"}


def _flat(cfg: Config) -> dict:
    return {f"{sec}.{k}": v for sec, vals in cfg.to_dict().items() for k, v in vals.items()}


def _check_same_run(state: dict, cfg: Config, num_classes: int, ckpt: Path) -> None:
    old, new = migrate_flat(state["config"]), _flat(cfg)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed or state["num_classes"] != num_classes:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed) or \
            f"num_classes {state['num_classes']} -> {num_classes}"
        raise UserError(f"{ckpt}: the checkpoint was made with other settings ({what}); "
                        "resume with the same config or train into a new --out")


def _layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _layers(layer)


def network_precision(model: keras.Model) -> dict:
    """What the built network computes in, read back from it: the first convolution's (or, in the
    embedding-only network, dense layer's) compute and variable dtypes, and whether the optimizer scales
    the loss (Keras's LossScaleOptimizer, which compile adds under mixed_float16)."""
    layer = next((la for la in _layers(model) if isinstance(la, keras.layers.Conv2D)), None) or \
        next((la for la in _layers(model) if isinstance(la, keras.layers.Dense)), None)
    return {"compute_dtype": str(layer.compute_dtype) if layer is not None else None,
            "variable_dtype": str(layer.variable_dtype) if layer is not None else None,
            "loss_scaling": isinstance(getattr(model, "optimizer", None), keras.optimizers.LossScaleOptimizer)}


def check_precision(found: dict, policy: str) -> None:
    """Refuse to train in another precision than the one the run will report."""
    want = keras.dtype_policies.get(policy)
    if found["compute_dtype"] not in (None, want.compute_dtype) or found["loss_scaling"] != (policy == "mixed_float16"):
        raise UserError(f"runtime precision {policy}, but the built network computes in {found['compute_dtype']} "
                        f"with loss scaling {'on' if found['loss_scaling'] else 'off'}: the dtype policy was lost "
                        "between setup and build")


def why_not_resumable(state: dict, cfg: Config, where) -> str | None:
    """None when a checkpoint's state was made with ``cfg``'s settings (a resume accepts it), else why not."""
    try:
        _check_same_run(state, cfg, state["num_classes"], where)
    except UserError as exc:
        return str(exc).split("; resume")[0]
    return None


class _Trainer:
    def __init__(self, data, out_dir, cfg: Config, runtime: Runtime, *, time_budget, progress, init_from=None):
        self.data, self.out, self.cfg, self.rt = pipeline.resolve_data_dirs(data), Path(out_dir), cfg, runtime
        self.init_from, self.init_report = init_from, None
        self.data_name = ", ".join(self.data)
        self.ckpt = self.out / CHECKPOINT_DIR
        self.budget = parse_duration(time_budget if time_budget is not None else cfg.session.time_budget)
        self.progress = progress
        self.started = time.monotonic()
        self.last_step_end = self.started
        self.last_plot = -math.inf
        self.slowest_step = 0.0
        self.reserve_extra = 0.0  # measured time of the last save + validation: what stopping needs
        self.stopped = None
        self.bar = None
        self.epoch = self.step_in_epoch = self.global_step = self.fit_start = 0
        self.history: list[dict] = []
        self.partial: dict | None = None  # (steps, logs) of the epoch so far, from a mid-epoch checkpoint
        self.last_logs: dict = {}

    # -- time and checkpoints ---------------------------------------------------------------
    def out_of_time(self, pending_calls: int = 0) -> bool:
        """Whether stopping now is needed to finish in the budget; ``pending_calls`` calls may still be
        running on the devices (dispatched, their logs not read yet), and the host clock is that far ahead."""
        if self.budget is None:
            return False
        reserve = (3 + pending_calls) * self.slowest_step + self.reserve_extra
        return time.monotonic() - self.started + reserve >= self.budget

    def epoch_logs(self) -> dict:
        """Running metrics of the current epoch, joining a resumed epoch's earlier part by step count."""
        done_now = self.step_in_epoch - (self.partial["steps"] if self.partial else 0)
        if not self.partial or not self.partial["steps"]:
            return dict(self.last_logs)
        k, prev = self.partial["steps"], self.partial["logs"]
        if done_now <= 0:
            return dict(prev)
        return {c: (prev[c] * k + self.last_logs[c] * done_now) / (k + done_now) for c in self.last_logs}

    def save_checkpoint(self, partial_logs: dict | None) -> None:
        if not self.rt.is_chief:
            # Saving may create variables, a collective op under MultiWorkerMirroredStrategy, so every
            # worker saves; only the chief keeps what it wrote.
            self.rt.sync(self.model)
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_weights(Path(tmp) / "worker.weights.h5")
            return
        t0 = time.monotonic()
        self.rt.sync(self.model)
        self.ckpt.mkdir(parents=True, exist_ok=True)
        weights = f"state-{self.global_step:09d}.weights.h5"
        self.model.save_weights(self.ckpt / weights)  # model weights and the optimizer's state
        state = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "weights": weights, "history": self.history,
            "partial": {"steps": self.step_in_epoch, "logs": partial_logs} if self.step_in_epoch else None,
            "config": _flat(self.cfg), "num_classes": self.num_classes, "steps_per_epoch": self.steps_per_epoch,
            "seed_states": [keras.ops.convert_to_numpy(v).tolist() for v in self._seed_states()],
            "init_from": self.init_report,
        }
        # The state names its weights file, so once the state is renamed into place the pair is complete.
        atomic_write_json(self.ckpt / STATE_FILE, state, indent=1)
        for old in self.ckpt.glob("state-*.weights.h5"):
            if old.name != weights:
                old.unlink()
        self.reserve_extra = max(self.reserve_extra, time.monotonic() - t0)

    def _seed_states(self) -> list:
        # Dropout and stochastic-depth masks come from these counters; Keras's weight files leave them out,
        # so the checkpoint carries them, or a resumed run would draw other masks than an unbroken one.
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def load_checkpoint(self) -> dict | None:
        path = self.ckpt / STATE_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: unreadable checkpoint state ({exc.msg}, line {exc.lineno})") from None

    # -- outputs ------------------------------------------------------------------------------
    def write_history(self, final: bool = False) -> None:
        """history.csv after every epoch; the plots with it when the run ends or PLOT_EVERY_SECONDS have passed."""
        if not self.rt.is_chief or not self.history:
            return
        frame = pd.DataFrame(self.history)
        self.out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.out / "history.csv", index=False)
        if final or time.monotonic() - self.last_plot >= PLOT_EVERY_SECONDS:
            plot_history(frame, self.schedule.by_epoch, self.cfg.train.epochs, self.out / "plots")
            self.last_plot = time.monotonic()

    # -- the run ------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict:
        cfg = self.cfg
        label_map = pipeline.read_data_label_map(self.data)
        self.num_classes = cfg.model.num_classes or len(label_map)
        if self.num_classes != len(label_map):
            raise UserError(f"model.num_classes = {cfg.model.num_classes} but the label_map.csv of {self.data_name} "
                            f"has {len(label_map)} classes")
        counts = label_map["count"].to_numpy()
        batch, lr_factor = global_batch(cfg, self.rt.replicas)
        n_train = pipeline.count_examples(self.data, "train")
        if n_train == 0:
            raise UserError(f"{self.data_name}: no training records")
        has_val = pipeline.count_examples(self.data, "validation") > 0
        self.steps_per_epoch = cfg.train.steps_per_epoch or max(n_train // batch, 1)
        if not cfg.train.steps_per_epoch:
            # A pass over the data, rounded down to whole compiled calls (under 32 batches of the epoch's
            # shuffled stream are left for the next epoch's): else steps_per_execution would fall to a divisor.
            per_call = steps_per_execution(cfg.runtime.steps_per_execution, self.rt.platform)
            if self.steps_per_epoch >= per_call:
                self.steps_per_epoch -= self.steps_per_epoch % per_call
        state = self.load_checkpoint()
        if state is not None and not resume:
            raise UserError(f"{self.ckpt} holds a checkpoint of an earlier run: pass --resume to continue it, "
                            "or train into a new --out")
        if state is not None:
            _check_same_run(state, cfg, self.num_classes, self.ckpt)
            self.steps_per_epoch = state["steps_per_epoch"]
        keras.utils.set_random_seed(cfg.train.seed)
        with self.rt.scope():
            # A checkpoint replaces every weight: no download or weights file needed to resume.
            built = cfg if state is None else replace(cfg, model=replace(cfg.model, weights="none"))
            # The policy is set here, where the layers take it, not trusted to have survived since setup_runtime:
            # keras.backend.clear_session() (e.g. after probing a weights file) resets it to float32.
            with self.rt.policy():
                self.model = self.rt.training_model(build_model(built, self.num_classes))
            if state is None and self.init_from:
                self.init_report = init_from_model_dir(self.model, self.init_from)
            # A compiled call never runs past an epoch's end or a checkpoint, nor starts mid-call on a resume.
            self.execution = steps_per_execution(cfg.runtime.steps_per_execution, self.rt.platform,
                                                 self.steps_per_epoch, cfg.session.checkpoint_every_steps,
                                                 state["step_in_epoch"] if state else 0)
            compile_model(self.model, cfg, counts, steps_per_epoch=self.steps_per_epoch, lr_factor=lr_factor,
                          jit_compile=self.rt.jit_compile, steps_per_execution=self.execution)
            self.precision = network_precision(self.model)
            check_precision(self.precision, self.rt.precision)
            if state is not None:
                self.model.optimizer.build(self.model.trainable_variables)
                self.model.load_weights(self.ckpt / state["weights"])
                for var, value in zip(self._seed_states(), state.get("seed_states", []), strict=False):
                    var.assign(np.asarray(value, dtype=var.dtype))
                self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
                self.global_step, self.history, self.partial = state["global_step"], state["history"], state["partial"]
                self.init_report = state.get("init_from")
        self.rt.before_fit(self.model)
        self.schedule = schedule_from_config(cfg, self.steps_per_epoch, lr_factor)
        total = cfg.train.epochs * self.steps_per_epoch
        if self.progress and self.rt.is_chief:
            self.bar = tqdm(total=total, initial=min(self.global_step, total), unit="step", desc="train")
        watch = StepWatch(self)
        try:
            while self.epoch < cfg.train.epochs and not self.stopped:
                self._one_epoch(watch, batch, has_val)
        finally:
            if self.bar is not None:
                self.bar.close()
        if self.rt.is_chief:
            extra = {"epochs_trained": self.epoch, "global_step": self.global_step,
                     "status": self.stopped or "complete", "replicas": self.rt.replicas,
                     "precision": self.rt.precision, **self.precision, "strategy": self.rt.kind,
                     "backend": self.rt.backend, "xla": self.rt.jit_compile, "global_batch": batch,
                     "lr_factor": lr_factor, "steps_per_execution": self.execution}
            if self.init_report is not None:
                extra["init_from"] = self.init_report
            save_model_dir(self.model, cfg, label_map, self.out, extra=extra)
        self.write_history(final=True)
        return self._summary(batch)

    def _one_epoch(self, watch: StepWatch, batch: int, has_val: bool) -> None:
        cfg, e, start = self.cfg, self.epoch, self.step_in_epoch
        t0 = time.monotonic()
        self.fit_start = start
        ds = pipeline.build_dataset(self.data, "train", cfg.data, batch, training=True,
                                    seed=cfg.train.seed * 100_003 + e, start_step=start)
        self.last_step_end = time.monotonic()
        with warnings.catch_warnings():
            # The stream is endless; Keras's "ran out of data" / "shuffle ignored" notes do not apply,
            # and a real shortfall is caught below.
            warnings.filterwarnings("ignore", message=".*(ran out of data|shuffle=True).*")
            with self.rt.scope():
                steps = self.steps_per_epoch - start
                self.model.fit(ds, initial_epoch=e, epochs=e + 1, steps_per_epoch=steps, verbose=0,
                               callbacks=lazy_callbacks([watch], self.model, epochs=e + 1, steps=steps))
        logs = self.epoch_logs()
        if self.step_in_epoch < self.steps_per_epoch and not self.stopped:
            raise UserError(f"{self.data_name}: the training stream ended after {self.step_in_epoch} of "
                            f"{self.steps_per_epoch} steps of epoch {e + 1}")
        if self.step_in_epoch < self.steps_per_epoch:  # stopped by the time budget: keep the place
            self.save_checkpoint(partial_logs=logs)
            return
        row = {"epoch": e + 1, "lr": float(self.schedule.by_epoch(e)), **logs}
        t_val = time.monotonic()
        self.rt.sync(self.model)  # one value per variable: what validates is what gets saved
        if has_val:
            res = self._validate(batch)
            row.update({f"val_{k}": float(res[k]) for k in METRIC_COLUMNS if k in res})
        row.update({"steps": self.steps_per_epoch, "seconds": round(time.monotonic() - t0, 3)})
        self.history.append(row)
        self.epoch, self.step_in_epoch, self.partial = e + 1, 0, None
        self.save_checkpoint(partial_logs=None)
        self.write_history()
        self.reserve_extra = max(self.reserve_extra, time.monotonic() - t_val)
        if self.out_of_time() and self.epoch < cfg.train.epochs:
            self.stopped = "time budget"

    def _validate(self, batch: int) -> dict:
        """Top-k and loss on the validation split; exact also when replicas need whole batches."""
        padded = self.rt.replicas > 1
        val = pipeline.build_dataset(self.data, "validation", self.cfg.data, batch, training=False,
                                     pad_to_batch=padded)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ran out of data.*")  # a finite pass, as meant
            with self.rt.scope():
                res = self.model.evaluate(val, return_dict=True, verbose=0)
        if padded:
            # Weighted metrics ignore the weight-0 copies, but the loss is averaged over every row,
            # copies included: scale it back to the mean over real images.
            n = pipeline.count_examples(self.data, "validation")
            res["loss"] = res["loss"] * (n + (-n % batch)) / n
        return res

    def _summary(self, batch: int) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "status": self.stopped or "complete", "epochs_done": self.epoch, "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch, "global_batch": batch, "num_classes": self.num_classes,
            "replicas": self.rt.replicas, "strategy": self.rt.kind, "precision": self.rt.precision,
            **self.precision, "backend": self.rt.backend, "xla": self.rt.jit_compile, "init_from": self.init_report,
            "history": self.history, "model_dir": str(self.out),
            "val_top1": last.get("val_top1", math.nan), "seconds": round(time.monotonic() - self.started, 1),
        }


def train_model(data, out_dir, cfg: Config, *, resume: bool = False, time_budget=None, init_from=None,
                runtime: Runtime | None = None, progress: bool = True) -> dict:
    """Train on shard folders (one, several, globs or a folder of parts) into a model folder; returns a summary.

    ``time_budget`` (``"8h30m"`` or seconds) overrides ``session.time_budget``;
    ``init_from`` (a model folder) starts a fresh run from its weights, at this
    config's image size (progressive resizing); a checkpoint to resume wins over it.
    ``runtime`` is a ready backend + devices + precision (default: from the config).
    """
    r = cfg.runtime
    rt = runtime or setup_runtime(r.strategy, r.precision, r.devices, backend=r.backend, announce=progress,
                                  require_accelerator=r.require_accelerator)
    trainer = _Trainer(data, out_dir, cfg, rt, time_budget=time_budget, progress=progress,
                       init_from=init_from)
    summary = trainer.run(resume)
    if rt.is_chief and progress:
        h = summary["history"][-1] if summary["history"] else {}
        print(f"train: {summary['status']}, {summary['epochs_done']}/{cfg.train.epochs} epochs, "
              f"{summary['global_step']} steps on {rt.replicas} replica(s) ({rt.backend} {rt.kind}, {rt.precision}: "
              f"{summary['compute_dtype']} compute, loss scaling {'on' if summary['loss_scaling'] else 'off'}), "
              f"loss {h.get('loss', float('nan')):.4f}, val top1 {summary['val_top1']:.4f}, "
              f"{summary['seconds']:.0f} s → {out_dir}")
    return summary
