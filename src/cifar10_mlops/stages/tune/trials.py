"""What every process that runs trials sets up, the stage and a distributed worker alike."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from cifar10_mlops.training import devices
from cifar10_mlops.core.settings import Params
from cifar10_mlops.training.data import fit_arguments
from cifar10_mlops.training.callbacks import training_callbacks
from cifar10_mlops.core.splits import load_split, per_class_subset
from cifar10_mlops.core.stage import seed_everything
from cifar10_mlops.stages.tune.runs import SearchLog


class Search(NamedTuple):
    seed: int
    strategy: object  # for the tuner; None on one device
    kwargs: dict  # tuner.search's arguments
    images: np.ndarray  # the search's training images
    labels: np.ndarray  # and their labels
    val: tuple[np.ndarray, np.ndarray]  # the validation split


def prepare_search(params: Params, data: Path) -> Search:
    """What every process that runs trials sets up, in this order: the devices (before
    TensorFlow starts), the seed, the data."""
    tune, train = params.tune, params.train
    placement = devices.setup(train.precision)
    seed = params.seed if tune.seed is None else tune.seed
    seed_everything(seed, deterministic=params.deterministic)
    rng = np.random.default_rng(seed)
    x_train, y_train = per_class_subset(*load_split(data, "train"), tune.train_per_class, rng)
    val = load_split(data, "val")
    # The whitening-bias freeze; not the lookahead, whose length a Hyperband trial lacks.
    callbacks = training_callbacks(train, None)
    if tune.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=tune.objective, patience=tune.early_stopping_patience
            )
        )
    search = fit_arguments(
        train, (x_train, y_train), val, seed=seed, epochs=tune.max_epochs, callbacks=callbacks
    )
    strategy = placement.strategy if placement.replicas > 1 else None
    return Search(seed, strategy, search, x_train, y_train, val)


def run_trials(tuner, log: SearchLog, search: dict) -> None:
    """tuner.search; an interrupted trial's MLflow run ends KILLED."""
    try:
        tuner.search(**search)
    except BaseException:
        log.abort()
        raise
