"""The network a recipe describes, initialised and compiled with its optimizer and loss:
what `train` fits and the tuner's hypermodel builds, trial by trial."""

from __future__ import annotations

import keras
import numpy as np

from cifar10_mlops.core.settings import TrainConfig
from cifar10_mlops.training.model import build_model, dirac_init, fit_whitening
from cifar10_mlops.training.optimizers import make_optimizer
from cifar10_mlops.training.data import steps_per_epoch


def build_network(cfg: TrainConfig, images: np.ndarray | None = None, *, portable: bool = False):
    """The uncompiled network `cfg` describes, initialised as its recipe says: `images`
    (training images) fit the `fast` network's whitening layer. `portable` builds with Keras'
    own BatchNormalization instead of the fused one: the form a saved model is loaded in."""
    c1, c2, c3 = cfg.widths
    model = build_model(
        cfg.architecture,
        conv_1_filters=c1,
        conv_2_filters=c2,
        conv_3_filters=c3,
        dense_units=cfg.dense_units,
        dropout=cfg.dropout,
        fused_batch_norm=not portable,
        head=cfg.head,
    )
    if cfg.architecture == "fast":
        if cfg.dirac_init:
            dirac_init(model)
        if images is not None:
            fit_whitening(model, images)
    return model


def compile_model(
    cfg: TrainConfig, images: np.ndarray | None = None, *, learning_rate=None
) -> keras.Model:
    """The network and optimizer `cfg` describes; the tuner's hypermodel builds through here.
    `learning_rate` (a number or schedule) replaces cfg's constant one."""
    model = build_network(cfg, images)
    whiten_steps = 0
    if images is not None:
        whiten_steps = cfg.whiten_bias_epochs * steps_per_epoch(len(images), cfg.batch_size)
    model.compile(
        optimizer=make_optimizer(cfg, learning_rate, whiten_bias_steps=whiten_steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return model
