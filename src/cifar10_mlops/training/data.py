"""The input pipeline: seeded, deterministic tf.data batches of augmented images, and
model.fit's arguments for a recipe, built here once for `train` and for every tuner trial."""

from __future__ import annotations

import sys

import keras
import numpy as np
import tensorflow as tf

from cifar10_mlops.core.settings import AugmentConfig, TrainConfig
from cifar10_mlops.training.augment import augment_batch, random_crop_flip
from cifar10_mlops.training.model import NUM_CLASSES


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Training steps per epoch: whole batches only (the last partial batch is dropped, as
    airbench does), at least one."""
    return max(1, images // batch_size)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    augment: AugmentConfig | None = None,
) -> tf.data.Dataset:
    """Batches of uint8 images and one-hot labels (for label smoothing).

    With `augment` (training) the dataset is endless, epoch after epoch, each epoch a fresh
    seeded shuffle cut into `steps_per_epoch` whole batches; give `fit` that many steps per
    epoch. With `augment.alternating_flip`, half the images (a seeded draw, made once) are
    mirrored on even epochs and the other half on odd ones, so every image is seen mirrored on
    exactly every other epoch. Without `augment`: one pass in order, the last batch partial.
    """
    labels = tf.one_hot(tf.cast(y, tf.int32), NUM_CLASSES)
    if augment is None:
        ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size)
        return ds.prefetch(tf.data.AUTOTUNE)
    images = tf.constant(x)
    n, steps = len(x), steps_per_epoch(len(x), batch_size)
    alternate = augment.horizontal_flip and augment.alternating_flip and not augment.warps
    first_flip = tf.constant(np.random.default_rng(seed).random(n) < 0.5)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), e])
        )
        batches = tf.data.Dataset.from_tensor_slices(order[: steps * batch_size])
        return batches.batch(batch_size).enumerate().map(lambda b, idx: (idx, e, e * steps + b))

    def transform(idx, e, step):
        # Each batch's draws come from (seed, its global step) alone, not from a random state
        # that parallel map calls would consume in whatever order their threads run.
        draws = tf.stack([tf.constant(seed, tf.int64), step])
        batch = tf.gather(images, idx)
        if alternate:
            flip = tf.not_equal(tf.gather(first_flip, idx), tf.equal(e % 2, 1))
            batch = random_crop_flip(batch, crop=augment.crop, flip=flip, seed=draws)
        else:
            batch = augment_batch(batch, augment, seed=draws)
        return batch, tf.gather(labels, idx)

    ds = tf.data.Dataset.counter().flat_map(epoch)
    return ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fit_arguments(
    cfg: TrainConfig,
    train_split: tuple[np.ndarray, np.ndarray],
    val_split: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> dict:
    """model.fit's arguments for `cfg`'s recipe: the endless augmented training batches cut
    into epochs of whole batches, one pass over the validation split, no Keras shuffling (the
    pipeline shuffles), one progress line per epoch unless on a terminal."""
    return {
        "x": make_dataset(*train_split, cfg.batch_size, seed=seed, augment=cfg.augment),
        "validation_data": make_dataset(*val_split, cfg.val_batch_size, seed=seed),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch(len(train_split[1]), cfg.batch_size),
        "callbacks": callbacks,
        "shuffle": False,  # Keras cannot shuffle a Dataset
        "verbose": 1 if sys.stdout.isatty() else 2,
    }
