"""params.yaml parsed once into frozen pydantic settings, one model per section.

params.yaml is the only home of every default: the models declare types, bounds and a
one-line description per key (docs/settings.md is generated from them), never a value, so a
key missing from the file is an error rather than a silent fallback. Unknown keys, wrong types
and values out of range raise ConfigError naming the file and the dotted key (checks.explain),
before a stage does any work.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from cifar10_mlops.core import validation as checks
from cifar10_mlops.core.validation import KeyedError
from cifar10_mlops.core.errors import ConfigError
from cifar10_mlops.core.fields import (  # noqa: F401 (re-exported: one import for users)
    ARCHITECTURES, MAX_BATCH, MAX_DEADLINE, MAX_EPOCHS, MAX_FILTERS, MAX_SEED, MAX_TIMEOUT,
    MAX_UNITS, OPTIMIZERS, Architecture, Batch, Confidence, Count, Epochs, F, Filters, Fraction,
    Head, Name, Optimizer, Positive, Schedule, Section, Seed, within,
)  # fmt: skip
from cifar10_mlops.core.search_space import (  # noqa: F401 (re-exported)
    TUNABLE, FilterRange, FloatRange, FractionRange, IntRange, OptimizerChoice, SearchSpace,
)  # fmt: skip

PARAMS_FILE = Path("params.yaml")
DRIFT_TESTS = ("embeddings", "classes", "confidence", "brightness")  # monitoring/drift.py's


class DownloadConfig(Section):
    source: str = F("URL or local path of the CIFAR-10 archive (CIFAR10_SOURCE overrides it)")
    checksum: Annotated[str, AfterValidator(checks.valid_checksum)] | None = F(
        "'md5:<hex>' or 'sha256:<hex>' of `source`; null skips verification"
    )
    retries: Annotated[int, Field(ge=1, le=100)] = F("attempts on transient HTTP errors")
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT)] = F("seconds without data: retry")
    deadline: Annotated[float, Field(gt=0, le=MAX_DEADLINE)] = F("seconds for all attempts")


class PrepareConfig(Section):
    val_fraction: Annotated[float, within("(0, 1)")] = F("share of train held out, stratified")
    train_per_class: Annotated[int, Field(ge=2, le=MAX_SEED)] | None = F(
        "training images kept per class; null: all 5,000"
    )
    test_per_class: Count | None = F("test images kept per class; null: all 1,000")


class AugmentConfig(Section):
    rotation: Annotated[float, within("[0, 180]", "in [0, 180] degrees")] = F("degrees, +-")
    shift: Fraction = F("fraction of width and height, uniform in [-shift, shift]")
    shear: Annotated[float, within("[0, 90)", "in [0, 90) degrees")] = F("degrees, +-")
    zoom: Fraction = F("per-axis scale uniform in [1 - zoom, 1 + zoom]")
    crop: Annotated[int, within("[0, 16]", "in [0, 16] pixels")] = F("pad-and-crop pixels")
    horizontal_flip: bool = F("mirror images")
    alternating_flip: bool = F("with horizontal_flip: each image mirrored every other epoch")

    @property
    def warps(self) -> bool:
        """Whether the study's affine warp (rotation, shift, shear, zoom) is on."""
        return any((self.rotation, self.shift, self.shear, self.zoom))


def block_widths(conv_1: int, conv_2: int, conv_3: int | None) -> tuple[int, int, int]:
    """The three conv blocks' filters; a third of None is twice the second (the study's
    deeper network doubles each block)."""
    return conv_1, conv_2, conv_3 or 2 * conv_2


class TrainConfig(Section):
    use_tuned: bool = F("take the searched values from models/best_hparams.json when tuned")
    architecture: Architecture = F("baseline (the study's) | deeper (3 VGG blocks) | fast")
    conv_1_filters: Filters = F("filters of the first conv block")
    conv_2_filters: Filters = F("filters of the second conv block")
    conv_3_filters: Filters | None = F("filters of the third block; null: twice conv_2")
    dense_units: Annotated[int, Field(ge=1, le=MAX_UNITS)] = F("hidden dense units (not fast)")
    dropout: Fraction = F("dropout rate before the classifier (and after each deeper block)")
    batch_size: Batch = F("images per step; an epoch's last partial batch is dropped")
    val_batch_size: Batch = F("images per validation step; affects speed only")
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = F(
        "auto: mixed_float16 on GPUs of compute capability 7.0+, float32 elsewhere"
    )
    epochs: Epochs = F("the schedule's length (cosine, triangle) or upper bound (step)")
    optimizer: Optimizer = F("adam | sgd | nesterov (Keras') | airbench | muon (airbench94_muon)")
    learning_rate: Positive = F("peak (or initial) rate; airbench, muon: per 1024 examples")
    momentum: Fraction = F("sgd, nesterov, airbench, and muon's SGD part")
    weight_decay: Fraction = F("airbench, muon: L2 per 1024 examples; others: decoupled decay")
    bias_lr_scale: Positive = F("airbench, muon: the biases' rate over learning_rate")
    muon_learning_rate: Positive = F("muon: each conv kernel's step, relative to its norm")
    muon_momentum: Fraction = F("muon: the conv kernels' Nesterov momentum")
    lr_schedule: Schedule = F("triangle: up, then down | cosine: warm-up, then decay | step")
    warmup_epochs: Annotated[float, Field(ge=0, le=MAX_EPOCHS)] = F("epochs to the peak rate")
    lr_start: Annotated[float, within("[0, 1]")] = F("triangle: first rate / learning_rate")
    lr_end: Annotated[float, within("[0, 1]")] = F("triangle: last rate / learning_rate")
    lr_drop_every: Count = F("step: epochs between learning-rate drops")
    lr_drop_factor: Annotated[float, within("(0, 1]")] = F("step: the rate's factor at a drop")
    lr_min: Annotated[float, Field(ge=0)] = F("cosine, step: the floor, at most learning_rate")
    label_smoothing: Fraction = F("share of each target spread over all classes")
    early_stopping_patience: Count | None = F("epochs without a better val_accuracy; null: off")
    dirac_init: bool = F("fast: each 3x3 conv starts as the identity on its first channels")
    whiten_bias_epochs: Seed = F("fast: epochs the whitening bias trains, then frozen")
    lookahead: bool = F("pull the weights to their running average every 5 steps; end on it")
    tta_level: Annotated[int, within("[0, 2]", "0, 1 or 2")] = F("0: one view, 1: mirror, 2: x3")
    head: Head = F("fast: airbench94 (PyTorch init, logits / 9) | airbench94_muon (unit std)")
    augment: AugmentConfig = F("per-batch augmentation in tf.data")

    @property
    def widths(self) -> tuple[int, int, int]:
        """The three blocks' filters (deeper, fast; baseline uses the first two)."""
        return block_widths(self.conv_1_filters, self.conv_2_filters, self.conv_3_filters)

    @model_validator(mode="after")
    def _rate_floor(self) -> TrainConfig:
        if self.lr_min > self.learning_rate:
            raise KeyedError("lr_min", f"must be in [0, learning_rate], got {self.lr_min}")
        return self


class TuneConfig(Section):
    enabled: bool = F("false: the stage writes 'not tuned' and train keeps its own values")
    objective: Literal["val_accuracy", "val_loss"] = F("what Hyperband ranks trials by")
    max_epochs: Epochs = F("Hyperband's largest per-trial budget")
    factor: Annotated[int, Field(ge=2, le=100)] = F("each round keeps the best 1/factor")
    hyperband_iterations: Annotated[int, Field(ge=1, le=100)] = F("full Hyperband sweeps")
    early_stopping_patience: Count | None = F("epochs without a better objective; null: off")
    seed: Seed | None = F("the search's seed; null: the top-level seed")
    train_per_class: Count | None = F("training images per class searched on; null: all")
    max_mflops: Positive | None = F("skip configurations dearer (forward MFLOPs per image)")
    first_trial_from_train: bool = F("the first trial is train's values, the ones to beat")
    confidence: Confidence = F("of the interval the best values' gain must clear to be adopted")
    space: SearchSpace = F("what the search varies")
    worker_timeout: Annotated[float, Field(gt=0, le=MAX_DEADLINE)] = F("seconds of silence")


class EvaluateConfig(Section):
    batch_size: Batch = F("images per prediction step; affects speed only")
    reference_images: Annotated[int, Field(ge=10, le=50_000)] = F(
        "validation images saved as the model's drift reference"
    )


class RegisterConfig(Section):
    model_name: Name = F("the registered model's name in MLflow")
    metric: Literal["accuracy", "f1_weighted", "f1_macro", "loss"] = F("compared on test")
    min_delta: Annotated[float, Field(ge=0)] = F("the gain's interval must lie above this")
    confidence: Confidence = F("of the gain's two-sided interval")


class RetrainConfig(Section):
    deployment: Name = F("the Prefect deployment that retrains on a schedule")
    cron: Annotated[str, AfterValidator(checks.valid_cron)] = F("minute hour day month weekday")
    timezone: Annotated[str, AfterValidator(checks.valid_timezone)] = F("IANA time zone of `cron`")
    force: bool = F("retrain even when no input changed")


class MonitorConfig(Section):
    window: Annotated[int, Field(ge=2, le=100_000)] = F(
        "newest images a drift test takes, and `serve --sample-dir` keeps"
    )
    min_images: Annotated[int, Field(ge=2, le=100_000)] = F("fewer in a window: no test")
    alpha: Annotated[float, within("(0, 0.5]", "above 0 and at most 0.5")] = F(
        "a clean window's false-alarm rate (each of the four tests at alpha/4)"
    )
    permutations: Annotated[int, Field(ge=19, le=10_000)] = F("of the MMD permutation test")
    deployment: Name = F("the Prefect deployment that tests the served window on a schedule")
    cron: Annotated[str, AfterValidator(checks.valid_cron)] = F("minute hour day month weekday")
    timezone: Annotated[str, AfterValidator(checks.valid_timezone)] = F("IANA time zone of `cron`")
    sample_dir: Annotated[str, AfterValidator(checks.valid_nonblank)] = F(
        "the folder `serve --sample-dir` writes its window to, which the deployment tests"
    )
    retrain_on_drift: bool = F("a drift found starts the retrain deployment")


class MlflowConfig(Section):
    experiment: Annotated[str, AfterValidator(checks.valid_nonblank)] = F(
        "training runs' experiment"
    )


# pydantic warns that the `register` section shadows ABCMeta.register, a class method of every
# model; the section is what `params.register` means, and nothing here registers subclasses.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", 'Field name "register"', UserWarning)

    class Params(Section):
        seed: Seed = F("one seed for the split, weight init, shuffling and augmentation")
        deterministic: bool = F("tune and train repeat bit for bit; false: runs differ")
        download: DownloadConfig = F("The download stage: fetch and verify the archive")
        prepare: PrepareConfig = F("The prepare stage: decode, split and subsample")
        tune: TuneConfig = F("The tune stage: a Keras Tuner Hyperband search on validation")
        train: TrainConfig = F("The train stage: the network, its recipe and augmentation")
        evaluate: EvaluateConfig = F("The evaluate stage: test-set metrics and predictions")
        register: RegisterConfig = F("The register stage: a new version, promoted past noise")
        retrain: RetrainConfig = F("The Prefect deployment that reruns the pipeline")
        monitor: MonitorConfig = F("The drift test of what the served model is asked")
        mlflow: MlflowConfig = F("Where the stages log their runs")

        @model_validator(mode="after")
        def _consistent(self) -> Params:
            space = self.tune.space
            if self.train.architecture == "fast" and space.dense_units is not None:
                raise KeyedError(
                    "tune.space.dense_units",
                    "the fast architecture has no hidden dense layer; set it to null",
                )
            searched = (
                space.optimizer.values if space.optimizer is not None else [self.train.optimizer]
            )
            if (
                self.tune.enabled
                and space.muon_learning_rate is not None
                and "muon" not in searched
            ):
                raise KeyedError(
                    "tune.space.muon_learning_rate",
                    f"only the muon optimizer uses it, and the search trains with "
                    f"{', '.join(searched)}; set it to null "
                    "(-S tune.space.muon_learning_rate=null)",
                )
            # the permutation p-value is at least 1 / (permutations + 1)
            needed = math.floor(len(DRIFT_TESTS) / self.monitor.alpha)
            if self.monitor.permutations < needed:
                raise KeyedError(
                    "monitor.permutations",
                    f"{self.monitor.permutations} permutations cannot give a p-value under "
                    f"alpha/{len(DRIFT_TESTS)} = {self.monitor.alpha / len(DRIFT_TESTS):.4g}: "
                    f"the embeddings test could never find drift; at least {needed}",
                )
            return self


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read, type-check and range-check a params file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=checks.UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return params_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def params_from_dict(raw: Any) -> Params:
    """Params from an already-parsed mapping (a Params' model_dump(), say)."""
    return _validate(Params, raw, "")


def replace_checked(obj: Section, key: str, **values: Any) -> Any:
    """`obj` with `values` replaced, checked as params.yaml is, with `key` (e.g. "train")
    naming the section in errors."""
    return _validate(type(obj), {**obj.model_dump(), **values}, key)


def flatten(settings: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for (nested) settings, as MLflow params want them."""
    flat: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _validate(model: type[Section], raw: Any, key: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(checks.explain(exc, model, key)) from None
