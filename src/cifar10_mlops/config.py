"""params.yaml parsed once into frozen, typed dataclasses.

params.yaml is the only home of every default: the dataclasses below declare types, not
values, so a key missing from the file is an error rather than a silent fallback.

Each stage reads its own section plus the top-level `seed`. An unknown key, a value of the
wrong type or one out of range raises ConfigError naming the file and the dotted key, before
the stage does any work.
"""

from __future__ import annotations

import dataclasses
import math
import types
import zoneinfo
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from cifar10_mlops.checks import (
    UniqueKeyLoader,
    at_least,
    between,
    check_checksum,
    check_cron,
    check_name,
    join,
    positive,
    span,
)
from cifar10_mlops.errors import ConfigError

PARAMS_FILE = Path("params.yaml")

# The names the code dispatches on have one home each: these types. model.py builds the
# architectures, fit.py the optimizers and schedules.
Architecture = Literal["baseline", "deeper", "fast"]
Optimizer = Literal["adam", "sgd", "nesterov", "airbench", "muon"]
Head = Literal["airbench94", "airbench94_muon"]
Schedule = Literal["step", "cosine", "triangle"]
ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)

# Upper bounds: values above them cannot run (NumPy takes seeds below 2**32) or would exhaust
# a machine's memory or time before doing anything useful. Far above any sensible setting.
MAX_SEED = 2**32 - 1
MAX_FILTERS = 4096  # conv filters per layer
MAX_UNITS = 65536  # dense units (and a searched integer's max)
MAX_BATCH = 65536  # images per step: the whole training split of CIFAR-10 is 50,000
MAX_EPOCHS = 10_000
MAX_TIMEOUT = 3600.0  # seconds one network read may wait
MAX_DEADLINE = 7 * 24 * 3600.0  # seconds: a week


@dataclass(frozen=True)
class DownloadConfig:
    source: str  # URL or local path of the archive
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>" of `source`
    retries: int
    timeout: float  # seconds without data before an attempt fails
    deadline: float  # seconds for the whole download, all attempts and back-offs included

    def check(self, key: str) -> None:
        if self.checksum is not None:
            check_checksum(self.checksum, f"{key}.checksum")
        between(key, "retries", self.retries, 1, 100)
        between(key, "timeout", self.timeout, 0, MAX_TIMEOUT, low_open=True)
        between(key, "deadline", self.deadline, 0, MAX_DEADLINE, low_open=True)


@dataclass(frozen=True)
class PrepareConfig:
    val_fraction: float
    train_per_class: int | None
    test_per_class: int | None

    def check(self, key: str) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"{key}.val_fraction: must be in (0, 1), got {self.val_fraction}")
        for name in ("train_per_class", "test_per_class"):
            value = getattr(self, name)
            if value is not None:
                at_least(key, name, value, 2 if name == "train_per_class" else 1)


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float
    shift: float
    shear: float
    zoom: float
    crop: int  # pixels of pad-and-crop translation; 0: none
    horizontal_flip: bool
    alternating_flip: bool  # with horizontal_flip: each image mirrored on every other epoch

    @property
    def warps(self) -> bool:
        """Whether the study's affine warp (rotation, shift, shear, zoom) is on."""
        return any((self.rotation, self.shift, self.shear, self.zoom))

    def check(self, key: str) -> None:
        if not 0 <= self.crop <= 16:
            raise ConfigError(f"{key}.crop: must be in [0, 16] pixels, got {self.crop}")
        if not 0 <= self.rotation <= 180:
            raise ConfigError(f"{key}.rotation: must be in [0, 180] degrees, got {self.rotation}")
        for name in ("shift", "zoom"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}: must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.shear < 90:
            raise ConfigError(f"{key}.shear: must be in [0, 90) degrees, got {self.shear}")


def block_widths(conv_1: int, conv_2: int, conv_3: int | None) -> tuple[int, int, int]:
    """The three conv blocks' filters; a third of None is twice the second (the study's
    deeper network doubles each block)."""
    return conv_1, conv_2, conv_3 or 2 * conv_2


@dataclass(frozen=True)
class TrainConfig:
    architecture: Architecture
    conv_1_filters: int
    conv_2_filters: int
    conv_3_filters: int | None  # None: twice conv_2_filters
    dense_units: int
    dropout: float
    batch_size: int
    epochs: int
    learning_rate: float
    lr_schedule: Schedule
    warmup_epochs: float
    lr_start: float  # triangle: the first step's rate, as a fraction of learning_rate
    lr_end: float  # triangle: the last step's rate, as a fraction of learning_rate
    lr_drop_every: int
    lr_drop_factor: float
    lr_min: float
    momentum: float  # sgd, nesterov, airbench, muon (its SGD part: classifier and biases)
    weight_decay: float
    bias_lr_scale: float  # airbench, muon: (BatchNorm, whitening) biases' rate / learning_rate
    muon_learning_rate: float  # muon: the conv filters' step, relative to their norm
    muon_momentum: float  # muon: the conv filters' Nesterov momentum
    label_smoothing: float
    early_stopping_patience: int | None
    augment: AugmentConfig
    optimizer: Optimizer
    val_batch_size: int
    use_tuned: bool
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]  # see devices.py
    dirac_init: bool  # fast: each 3x3 conv starts as the identity on its first channels
    whiten_bias_epochs: int  # fast: epochs the whitening layer's bias trains before freezing
    lookahead: bool  # airbench's lookahead: weights pulled to their running average
    tta_level: int  # 0: none, 1: mirror averaging, 2: mirror x 3 translations (6 views)
    head: Head  # fast: the classifier's init and logit scale

    @property
    def widths(self) -> tuple[int, int, int]:
        """The three blocks' filters (deeper, fast; baseline uses the first two)."""
        return block_widths(self.conv_1_filters, self.conv_2_filters, self.conv_3_filters)

    def check(self, key: str) -> None:
        at_least(key, "whiten_bias_epochs", self.whiten_bias_epochs, 0)
        if self.tta_level not in (0, 1, 2):
            raise ConfigError(f"{key}.tta_level: must be 0, 1 or 2, got {self.tta_level}")
        for name in ("momentum", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}: must be in [0, 1), got {getattr(self, name)}")
        positive(key, "muon_learning_rate", self.muon_learning_rate)
        positive(key, "bias_lr_scale", self.bias_lr_scale)
        for name in ("lr_start", "lr_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{key}.{name}: must be in [0, 1], got {getattr(self, name)}")
        for name in ("conv_1_filters", "conv_2_filters", "conv_3_filters"):
            if getattr(self, name) is not None:
                between(key, name, getattr(self, name), 1, MAX_FILTERS)
        between(key, "dense_units", self.dense_units, 1, MAX_UNITS)
        for name in ("batch_size", "val_batch_size"):
            between(key, name, getattr(self, name), 1, MAX_BATCH)
        between(key, "epochs", self.epochs, 1, MAX_EPOCHS)
        at_least(key, "lr_drop_every", self.lr_drop_every, 1)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout: must be in [0, 1), got {self.dropout}")
        positive(key, "learning_rate", self.learning_rate)
        if not 0 < self.lr_drop_factor <= 1:
            raise ConfigError(f"{key}.lr_drop_factor: must be in (0, 1], got {self.lr_drop_factor}")
        if not 0 <= self.lr_min <= self.learning_rate:
            raise ConfigError(f"{key}.lr_min: must be in [0, learning_rate], got {self.lr_min}")
        if self.early_stopping_patience is not None:
            at_least(key, "early_stopping_patience", self.early_stopping_patience, 1)
        between(key, "warmup_epochs", self.warmup_epochs, 0, MAX_EPOCHS)
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"{key}.weight_decay: must be in [0, 1), got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"{key}.label_smoothing: must be in [0, 1), got {self.label_smoothing}"
            )


@dataclass(frozen=True)
class IntRange:
    """Integers min, min + step, ... up to max (keras_tuner.HyperParameters.Int)."""

    min: int
    max: int
    step: int

    def check(self, key: str) -> None:
        span(key, self.min, self.max)
        at_least(key, "min", self.min, 1)
        between(key, "max", self.max, 1, MAX_UNITS)
        if not 1 <= self.step <= self.max - self.min:
            raise ConfigError(
                f"{key}.step: must be in [1, max - min = {self.max - self.min}], got {self.step}"
            )


@dataclass(frozen=True)
class FloatRange:
    """Floats in [min, max], sampled uniformly or log-uniformly (HyperParameters.Float)."""

    min: float
    max: float
    sampling: Literal["linear", "log"]

    def check(self, key: str) -> None:
        span(key, self.min, self.max)
        positive(key, "min", self.min)


@dataclass(frozen=True)
class OptimizerChoice:
    """Optimizer names to choose from (HyperParameters.Choice)."""

    values: list[str]

    def check(self, key: str) -> None:
        if not self.values:
            raise ConfigError(f"{key}.values: empty; list at least one of {', '.join(OPTIMIZERS)}")
        for name in self.values:
            if name not in OPTIMIZERS:
                raise ConfigError(
                    f"{key}.values: unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}"
                )
        if len(set(self.values)) != len(self.values):
            raise ConfigError(f"{key}.values: lists an optimizer twice: {self.values}")


@dataclass(frozen=True)
class SearchSpace:
    """What Hyperband searches; a null entry is not searched and keeps its `train` value."""

    conv_1_filters: IntRange | None
    conv_2_filters: IntRange | None
    conv_3_filters: IntRange | None
    dense_units: IntRange | None
    learning_rate: FloatRange | None
    muon_learning_rate: FloatRange | None
    weight_decay: FloatRange | None
    label_smoothing: FloatRange | None
    optimizer: OptimizerChoice | None

    def check(self, key: str) -> None:
        if all(getattr(self, name) is None for name in TUNABLE):
            raise ConfigError(f"{key}: every entry is null; nothing to search")
        # Each entry within the range its `train` value has: a search must not end in values
        # that `train` then refuses.
        highs = {"conv_1_filters": MAX_FILTERS, "conv_2_filters": MAX_FILTERS,
                 "conv_3_filters": MAX_FILTERS, "dense_units": MAX_UNITS}  # fmt: skip
        for name, high in highs.items():
            if getattr(self, name) is not None:
                between(f"{key}.{name}", "max", getattr(self, name).max, 1, high)
        for name in ("weight_decay", "label_smoothing"):
            entry = getattr(self, name)
            if entry is not None and not entry.max < 1:
                raise ConfigError(f"{key}.{name}.max: must be < 1, got {entry.max}")


# The `train` values a search may replace: one entry of `tune.space` each.
TUNABLE: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SearchSpace))


def check_confidence(key: str, confidence: float) -> None:
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"{key}.confidence: must be at least 0.5 and below 1, got {confidence}")


@dataclass(frozen=True)
class TuneConfig:
    enabled: bool
    objective: Literal["val_accuracy", "val_loss"]
    max_epochs: int
    factor: int
    hyperband_iterations: int
    early_stopping_patience: int | None
    seed: int | None
    train_per_class: int | None
    max_mflops: float | None
    first_trial_from_train: bool
    confidence: float  # of the interval the best trial's gain over train's values must clear
    space: SearchSpace
    worker_timeout: float  # seconds a distributed worker may go silent before losing its trial

    def check(self, key: str) -> None:
        between(key, "max_epochs", self.max_epochs, 1, MAX_EPOCHS)
        between(key, "factor", self.factor, 2, 100)
        between(key, "hyperband_iterations", self.hyperband_iterations, 1, 100)
        if self.early_stopping_patience is not None:
            at_least(key, "early_stopping_patience", self.early_stopping_patience, 1)
        if self.seed is not None:
            between(key, "seed", self.seed, 0, MAX_SEED)
        if self.train_per_class is not None:
            at_least(key, "train_per_class", self.train_per_class, 1)
        if self.max_mflops is not None:
            positive(key, "max_mflops", self.max_mflops)
        between(key, "worker_timeout", self.worker_timeout, 0, MAX_DEADLINE, low_open=True)
        check_confidence(key, self.confidence)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int

    def check(self, key: str) -> None:
        between(key, "batch_size", self.batch_size, 1, MAX_BATCH)


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str
    metric: Literal["accuracy", "f1_weighted", "f1_macro", "loss"]  # on the test split
    min_delta: float  # the gain's interval must lie above this for a promotion
    confidence: float  # of that two-sided interval

    def check(self, key: str) -> None:
        check_name(key, "model_name", self.model_name)
        if not self.min_delta >= 0:
            raise ConfigError(f"{key}.min_delta: must be >= 0, got {self.min_delta}")
        check_confidence(key, self.confidence)


@dataclass(frozen=True)
class RetrainConfig:
    deployment: str
    cron: str
    timezone: str
    force: bool

    def check(self, key: str) -> None:
        check_name(key, "deployment", self.deployment)
        check_cron(self.cron, f"{key}.cron")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a folder
            raise ConfigError(
                f"{key}.timezone: unknown time zone {self.timezone!r} (an IANA name such as "
                "UTC or Europe/Paris)"
            ) from None


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str

    def check(self, key: str) -> None:
        if not self.experiment.strip():
            raise ConfigError(f"{key}.experiment: must not be empty")


@dataclass(frozen=True)
class Params:
    seed: int
    deterministic: bool
    download: DownloadConfig
    prepare: PrepareConfig
    tune: TuneConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    register: RegisterConfig
    retrain: RetrainConfig
    mlflow: MlflowConfig

    def check(self, key: str) -> None:
        between(key, "seed", self.seed, 0, MAX_SEED)
        if self.train.architecture == "fast" and self.tune.space.dense_units is not None:
            raise ConfigError(
                "tune.space.dense_units: the fast architecture has no hidden dense layer; "
                "set it to null"
            )
        space = self.tune.space
        searched = space.optimizer.values if space.optimizer is not None else [self.train.optimizer]
        if self.tune.enabled and space.muon_learning_rate is not None and "muon" not in searched:
            raise ConfigError(
                "tune.space.muon_learning_rate: only the muon optimizer uses it, and the "
                f"search trains with {', '.join(searched)}; set it to null "
                "(-S tune.space.muon_learning_rate=null)"
            )


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read, type-check and range-check a params file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return _build(Params, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def params_from_dict(raw: dict) -> Params:
    """Params from an already-parsed mapping (dataclasses.asdict of a Params, say)."""
    return _build(Params, raw, "")


def replace_checked(obj: Any, key: str, **values: Any) -> Any:
    """dataclasses.replace, then the same type and range checks as params.yaml gets, with
    `key` (e.g. "train") naming the section in errors."""
    raw = {**dataclasses.asdict(obj), **values}
    return _build(type(obj), raw, key)


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for a (nested) config dataclass, as MLflow params want them."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _build(cls: type, raw: Any, key: str) -> Any:
    where = key or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        dotted = ", ".join(join(key, str(u)) for u in unknown)
        raise ConfigError(f"unknown key {dotted} (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        sub = join(key, f.name)
        if f.name not in raw:
            raise ConfigError(f"missing key {sub}")
        values[f.name] = _coerce(hints[f.name], raw[f.name], sub)
    obj = cls(**values)
    obj.check(key or "")
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(inner, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(inner, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    # bool is an int subclass in Python; a YAML `true` must not pass for a number.
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        if value > MAX_SEED:  # a backstop: integers also have their own ranges
            raise ConfigError(f"{key}: must be <= {MAX_SEED}, got {value}")
        return value
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
