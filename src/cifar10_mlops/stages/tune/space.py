"""The search space and the hypermodel: what a trial's values are and the network they build.

`CnnHyperModel` builds `train`'s network through network.compile_model, with the trial's values in
place of the searched `train` entries (params.yaml `tune.space`, one entry per name in
config.TUNABLE); `mflops` is a configuration's cost, which `tune.max_mflops` caps.
"""

from __future__ import annotations

from functools import cache

import keras_tuner as kt

from cifar10_mlops.core.settings import (
    TUNABLE,
    FloatRange,
    IntRange,
    OptimizerChoice,
    SearchSpace,
    TrainConfig,
)
from cifar10_mlops.training.network import compile_model
from cifar10_mlops.training.schedules import scheduled_rate
from cifar10_mlops.training.data import steps_per_epoch
from cifar10_mlops.training.model import build_model, forward_mflops

# The `train` keys a search depends on besides the searched ones (TUNABLE): the network, its
# input pipeline and its loss. dvc.yaml's `tune` stage lists exactly these (a test checks).
TRAIN_KEYS = (
    "architecture", "dropout", "batch_size", "val_batch_size", "augment", "precision",
    "lr_schedule", "warmup_epochs", "lr_start", "lr_end", "lr_drop_every", "lr_drop_factor",
    "lr_min", "momentum", "bias_lr_scale", "muon_momentum", "head", "dirac_init",
    "whiten_bias_epochs",
)  # fmt: skip


# Keras Tuner's bookkeeping values: MLflow tags of a trial, not hyperparameters.
TUNER_KEYS = (
    "tuner/epochs",
    "tuner/initial_epoch",
    "tuner/bracket",
    "tuner/round",
    "tuner/trial_id",
)


def searched(space: SearchSpace) -> dict[str, IntRange | FloatRange | OptimizerChoice]:
    return {name: spec for name in TUNABLE if (spec := getattr(space, name)) is not None}


def declare(hp: kt.HyperParameters, space: SearchSpace) -> dict:
    """Register the search space with keras-tuner; returns this trial's values."""
    values = {}
    for name, spec in searched(space).items():
        if isinstance(spec, IntRange):
            values[name] = hp.Int(name, spec.min, spec.max, step=spec.step)
        elif isinstance(spec, FloatRange):
            values[name] = hp.Float(name, spec.min, spec.max, sampling=spec.sampling)
        else:
            values[name] = hp.Choice(name, spec.values)
    return values


def in_space(value, spec) -> bool:
    if isinstance(spec, IntRange):
        return spec.min <= value <= spec.max and (value - spec.min) % spec.step == 0
    if isinstance(spec, FloatRange):
        return spec.min <= value <= spec.max
    return value in spec.values


class CnnHyperModel(kt.HyperModel):
    """`train`'s network and optimizer with the searched entries taken from the trial; a
    per-step schedule (cosine, triangle) runs over the search's `max_epochs`, so a trial that
    Hyperband stops early has seen the start of the schedule only."""

    def __init__(self, train_cfg: TrainConfig, space: SearchSpace, images, max_epochs: int):
        super().__init__(name="cifar10_cnn")
        self.train_cfg = train_cfg
        self.space = space
        self.images = images  # training images, for the `fast` network's whitening layer
        self.max_epochs = max_epochs

    def build(self, hp):
        values = {**declare(hp, self.space), "epochs": self.max_epochs}
        cfg = self.train_cfg.model_copy(update=values)
        steps = steps_per_epoch(len(self.images), cfg.batch_size)
        return compile_model(cfg, self.images, learning_rate=scheduled_rate(cfg, steps))


@cache
def _mflops(architecture: str, widths: tuple[int, int, int], dense: int, dropout: float) -> float:
    model = build_model(
        architecture,
        conv_1_filters=widths[0],
        conv_2_filters=widths[1],
        conv_3_filters=widths[2],
        dense_units=dense,
        dropout=dropout,
    )
    return forward_mflops(model)


def mflops(cfg: TrainConfig, values: dict) -> float:
    """Forward MFLOPs per image of `cfg`'s network with a trial's values."""
    cfg = cfg.model_copy(update={k: v for k, v in values.items() if k not in TUNER_KEYS})
    return _mflops(cfg.architecture, cfg.widths, cfg.dense_units, cfg.dropout)


def fmt(value) -> str:
    """A hyperparameter value as people read it: 3 significant digits for floats."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
