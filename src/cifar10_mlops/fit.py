"""The training code `train` and `tune` share (neither stage imports the other): the input
pipeline, the optimizers, the learning-rate schedules and the compiled network.

Changing this module reruns both stages; a change to either stage's own module reruns only
that stage (see dvc.yaml).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifar10_mlops.augment import augment_batch
from cifar10_mlops.config import AugmentConfig, TrainConfig
from cifar10_mlops.model import NUM_CLASSES, build_model, fit_whitening


def step_schedule(cfg: TrainConfig):
    """The study's step decay: lr * factor ** (epoch // every), never below lr_min."""

    def schedule(epoch: int, _lr: float | None = None) -> float:
        return max(
            cfg.lr_min, cfg.learning_rate * cfg.lr_drop_factor ** (epoch // cfg.lr_drop_every)
        )

    return schedule


def cosine_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Per step: linear warm-up from lr_min to learning_rate over `warmup_epochs`, then a
    cosine decay back to lr_min at the end of the last epoch."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr_min if warmup else cfg.learning_rate,
        decay_steps=total - warmup,
        alpha=cfg.lr_min / cfg.learning_rate,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    augment: AugmentConfig | None = None,
) -> tf.data.Dataset:
    """Batches of uint8 images and one-hot labels (for label smoothing); shuffled and
    augmented on the fly when `augment` is given."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augment is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def transform(images, labels):
        if augment is not None:
            images = augment_batch(images, augment)
        return images, tf.one_hot(tf.cast(labels, tf.int32), NUM_CLASSES)

    return ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class LearningRateLog(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into each epoch's logs (and so the history),
    as LearningRateScheduler does for the step schedule."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def make_optimizer(name: str, learning_rate, weight_decay: float) -> keras.optimizers.Optimizer:
    decay = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if name in ("sgd", "nesterov"):
        return keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=name == "nesterov", weight_decay=decay
        )
    raise ValueError(f"unknown optimizer {name!r}")


def compile_model(
    cfg: TrainConfig,
    images: np.ndarray | None = None,
    *,
    learning_rate=None,
    portable: bool = False,
) -> keras.Model:
    """The network and optimizer `cfg` describes; the tuner's hypermodel builds through here.

    `images` (training images) fit the `fast` network's whitening layer. `learning_rate` (a
    number or schedule) replaces cfg's constant one. `portable` builds with Keras' own
    BatchNormalization instead of the fused one: the form a saved model is loaded in."""
    model = build_model(
        cfg.architecture,
        conv_1_filters=cfg.conv_1_filters,
        conv_2_filters=cfg.conv_2_filters,
        dense_units=cfg.dense_units,
        dropout=cfg.dropout,
        fused_batch_norm=not portable,
    )
    if cfg.architecture == "fast" and images is not None:
        fit_whitening(model, images)
    model.compile(
        optimizer=make_optimizer(
            cfg.optimizer, learning_rate or cfg.learning_rate, cfg.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return model
