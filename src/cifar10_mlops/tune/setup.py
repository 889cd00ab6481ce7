"""What every process that runs trials sets up, the stage and a distributed worker alike."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from cifar10_mlops import devices
from cifar10_mlops.settings import Params
from cifar10_mlops.fit import make_dataset, steps_per_epoch, training_callbacks
from cifar10_mlops.splits import load_split
from cifar10_mlops.stage import seed_everything
from cifar10_mlops.tune.records import SearchLog


def subset_per_class(x: np.ndarray, y: np.ndarray, per_class: int | None, seed: int):
    """A seeded, stratified subset of at most `per_class` images of each class."""
    if per_class is None:
        return x, y
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
    )
    return x[keep], y[keep]


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
    x_train, y_train = subset_per_class(*load_split(data, "train"), tune.train_per_class, seed)
    val = load_split(data, "val")
    # The whitening-bias freeze; not the lookahead, whose length a Hyperband trial lacks.
    callbacks = training_callbacks(train, None)
    if tune.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=tune.objective, patience=tune.early_stopping_patience
            )
        )
    search = {
        "x": make_dataset(x_train, y_train, train.batch_size, seed=seed, augment=train.augment),
        "validation_data": make_dataset(*val, train.val_batch_size, seed=seed),
        "epochs": tune.max_epochs,
        "steps_per_epoch": steps_per_epoch(len(y_train), train.batch_size),
        "callbacks": callbacks,
        "shuffle": False,  # the tf.data pipeline shuffles
        "verbose": 1 if sys.stdout.isatty() else 2,
    }
    strategy = placement.strategy if placement.replicas > 1 else None
    return Search(seed, strategy, search, x_train, y_train, val)


def run_trials(tuner, log: SearchLog, search: dict) -> None:
    """tuner.search; an interrupted trial's MLflow run ends KILLED."""
    try:
        tuner.search(**search)
    except BaseException:
        log.abort()
        raise
