"""The training code `train` and `tune` share (neither stage imports the other): the input
pipeline, the optimizers, the learning-rate schedules and the compiled network.

Changing this module reruns both stages; a change to either stage's own module reruns only
that stage (see dvc.yaml).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cifar10_mlops.augment import augment_batch, random_crop_flip
from cifar10_mlops.settings import AugmentConfig, TrainConfig
from cifar10_mlops.errors import PipelineError
from cifar10_mlops.model import (
    NUM_CLASSES,
    WHITEN_LAYER,
    build_model,
    dirac_init,
    fit_whitening,
)


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


def triangle_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """airbench's schedule, per step: linear from lr_start x learning_rate up to learning_rate
    at `warmup_epochs`, then linear down to lr_end x learning_rate at the last step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return Triangle(cfg.learning_rate, cfg.lr_start, cfg.lr_end, warmup, total)


class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear learning rate: start -> peak over `warmup` steps -> end at `total`."""

    def __init__(self, peak: float, start: float, end: float, warmup: int, total: int):
        self.peak, self.start, self.end, self.warmup, self.total = peak, start, end, warmup, total

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.start + (1 - self.start) * step / max(1, self.warmup)
        falling = 1 + (self.end - 1) * (step - self.warmup) / max(1, self.total - self.warmup)
        factor = keras.ops.where(step < self.warmup, rising, keras.ops.maximum(falling, self.end))
        return self.peak * factor

    def get_config(self):
        return {
            "peak": self.peak, "start": self.start, "end": self.end,
            "warmup": self.warmup, "total": self.total,
        }  # fmt: skip


def scheduled_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The per-step schedule (cosine, triangle) over cfg.epochs, or None for the per-epoch
    step schedule, which a LearningRateScheduler callback applies."""
    if cfg.lr_schedule == "cosine":
        return cosine_schedule(cfg, steps_per_epoch)
    if cfg.lr_schedule == "triangle":
        return triangle_schedule(cfg, steps_per_epoch)
    return None


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


class LearningRateLog(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into each epoch's logs (and so the history),
    as LearningRateScheduler does for the step schedule."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def airbench_step_gain(batch_size: int, momentum: float) -> float:
    """Keras' SGD step per unit of airbench's learning rate: airbench's rate is per 1024
    examples and independent of momentum (PyTorch's dampening-free Nesterov)."""
    return batch_size / 1024 * (1 - momentum) / (2 - momentum)


class AirbenchSGD(keras.optimizers.SGD):
    """SGD with Nesterov momentum in airbench94's parametrisation (PyTorch's SGD underneath).

    - `learning_rate` (a number or schedule) and `weight_decay` are per 1024 examples and
      independent of momentum: the Keras step size on the batch-mean loss is learning_rate x
      batch_size/1024 x (1 - momentum)/(2 - momentum), so changing momentum or the batch size
      needs no retuning.
    - Weight decay is L2 added to the gradient, so it goes through the momentum (PyTorch's
      SGD and airbench, not Keras' decoupled `weight_decay`), with a strength that follows the
      schedule: weight_decay/peak_learning_rate x the current step size, per step.
    - Every BatchNorm bias (a variable named `beta`) trains at `bias_lr_scale` x the rate;
      its decay is not scaled.
    """

    def __init__(
        self,
        learning_rate,
        *,
        momentum: float,
        weight_decay: float,
        peak_learning_rate: float,
        batch_size: int,
        bias_lr_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(learning_rate, momentum=momentum, nesterov=True, **kwargs)
        self.coupled_weight_decay = weight_decay
        self.peak_learning_rate = peak_learning_rate
        self.batch_size = batch_size
        self.bias_lr_scale = bias_lr_scale
        self.step_gain = airbench_step_gain(batch_size, momentum)
        self._biases: set[int] = set()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._biases = {i for i, v in enumerate(variables) if v.name == "beta"}

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        if self._get_variable_index(variable) in self._biases:
            gradient = gradient * self.bias_lr_scale
        l2 = self.coupled_weight_decay / self.peak_learning_rate
        if l2:
            gradient = gradient + ops.cast(l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate * self.step_gain)

    def get_config(self):
        config = super().get_config()
        del config["nesterov"]
        config.update(
            weight_decay=self.coupled_weight_decay,
            peak_learning_rate=self.peak_learning_rate,
            batch_size=self.batch_size,
            bias_lr_scale=self.bias_lr_scale,
        )
        return config


# airbench94_muon's quintic Newton-Schulz coefficients (3 iterations).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix, steps: int = 3, eps: float = 1e-7):
    """airbench94_muon's Newton-Schulz iteration: `matrix` (2-D) with the same singular
    vectors and its singular values pushed toward 1 (after 3 steps roughly into [0.5, 1.5],
    which trains as well as exact orthogonalisation)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix / (ops.sqrt(ops.sum(ops.square(matrix))) + eps)
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = ops.transpose(x)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if tall else x


class AirbenchMuon(AirbenchSGD):
    """airbench94_muon's two optimizers (KellerJordan/cifar10-airbench, airbench94_muon.py)
    as one Keras optimizer.

    - Every trainable 4-D kernel (the 3x3 convolutions) steps with Muon: Nesterov momentum
      `muon_momentum` on the raw gradient; the kernel is rescaled to norm sqrt(filters) and
      moved by `muon_learning_rate` x the orthogonalised momentum (its (kh*kw*in, filters)
      matrix with singular values near 1). No weight decay: the rescaling bounds the weights.
      The rate follows the schedule as a fraction of its peak.
    - Everything else steps as AirbenchSGD: the classifier at the schedule's rate, BatchNorm
      biases and the whitening bias at `bias_lr_scale` x it, L2 decay through the momentum.
      The whitening bias's rate also falls linearly to 0 over `whiten_bias_steps`.
    """

    def __init__(
        self,
        learning_rate,
        *,
        muon_learning_rate: float,
        muon_momentum: float,
        whiten_bias_steps: int = 0,
        **kwargs,
    ):
        super().__init__(learning_rate, **kwargs)
        self.muon_learning_rate = muon_learning_rate
        self.muon_momentum = muon_momentum
        self.whiten_bias_steps = whiten_bias_steps
        self._filters: set[int] = set()
        self._whiten_bias: set[int] = set()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._filters = {i for i, v in enumerate(variables) if len(v.shape) == 4}
        self._whiten_bias = {i for i, v in enumerate(variables) if v.path == f"{WHITEN_LAYER}/bias"}
        self._biases |= self._whiten_bias

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if index not in self._filters:
            if index in self._whiten_bias and self.whiten_bias_steps:
                left = 1 - ops.cast(self.iterations, "float32") / self.whiten_bias_steps
                learning_rate = learning_rate * ops.maximum(left, 0.0)
            return super().update_step(gradient, variable, learning_rate)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = self.momentums[index]
        self.assign(momentum, self.muon_momentum * momentum + gradient)
        nesterov = gradient + self.muon_momentum * momentum
        filters = variable.shape[-1]
        update = ops.reshape(orthogonalize(ops.reshape(nesterov, (-1, filters))), variable.shape)
        norm = ops.sqrt(ops.sum(ops.square(variable)))
        rate = self.muon_learning_rate * learning_rate / self.peak_learning_rate
        step = ops.cast(rate, variable.dtype) * update
        self.assign(variable, variable * (filters**0.5 / norm) - step)

    def get_config(self):
        config = super().get_config()
        config.update(
            muon_learning_rate=self.muon_learning_rate,
            muon_momentum=self.muon_momentum,
            whiten_bias_steps=self.whiten_bias_steps,
        )
        return config


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every `every` steps a running average of all the float weights
    (BatchNorm statistics included) moves toward them, `avg = decay*avg + (1-decay)*w`, and the
    weights jump to it; training ends on the average. The decay grows as 0.95**every x
    (step/total_steps)**3: no averaging at first, a long memory at the end."""

    def __init__(self, total_steps: int, every: int = 5):
        super().__init__()
        self.total_steps, self.every = total_steps, every

    def on_train_begin(self, logs=None):
        self.step = 0
        weights = [w for w in self.model.weights if "float" in str(w.dtype)]
        self.pairs = [(tf.Variable(w.value, trainable=False), w) for w in weights]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            fraction = min(1.0, self.step / self.total_steps)
            self.pull(0.95**self.every * fraction**3)

    def on_train_end(self, logs=None):
        self.pull(1.0)

    def pull(self, decay: float) -> None:
        for average, weight in self.pairs:
            average.assign(decay * average + (1 - decay) * weight.value)
            weight.assign(average)


class FreezeWhiteningBias(keras.callbacks.Callback):
    """Train the `fast` network's whitening bias for the first `epochs` epochs only (airbench:
    3), then freeze it. Keras fixes the trained variables when it builds the train step, so
    the step is rebuilt once, at the freeze."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        bias = self.model.get_layer(WHITEN_LAYER).bias
        if epoch >= self.epochs and bias.trainable:
            bias.trainable = False
            self.model.make_train_function(force=True)


class Diverged(PipelineError):
    """The training loss became NaN or infinite."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stop at the first step whose loss is not finite, by raising Diverged: unlike Keras'
    TerminateOnNaN, which ends training normally and leaves a NaN model to be saved."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise Diverged(
                f"training diverged: the loss is {float(loss)} at epoch {self.epoch + 1}, step "
                f"{batch + 1}; nothing was saved. Lower train.learning_rate or check the data"
            )


def training_callbacks(cfg: TrainConfig, total_steps: int | None) -> list[keras.callbacks.Callback]:
    """The callbacks `cfg`'s recipe trains with (the lookahead needs the run's `total_steps`)."""
    callbacks = []
    if cfg.architecture == "fast":
        callbacks.append(FreezeWhiteningBias(cfg.whiten_bias_epochs))
    if cfg.lookahead and total_steps:
        callbacks.append(Lookahead(total_steps))
    return callbacks


def make_optimizer(
    cfg: TrainConfig, learning_rate=None, *, whiten_bias_steps: int = 0
) -> keras.optimizers.Optimizer:
    """`cfg`'s optimizer; `learning_rate` (a number or schedule) replaces the constant one.
    `whiten_bias_steps`: muon's whitening bias rate reaches 0 at this step (0: constant)."""
    rate = learning_rate or cfg.learning_rate
    decay = cfg.weight_decay or None
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if cfg.optimizer in ("sgd", "nesterov"):
        return keras.optimizers.SGD(
            rate, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov", weight_decay=decay
        )
    sgd = dict(
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        peak_learning_rate=cfg.learning_rate, batch_size=cfg.batch_size,
        bias_lr_scale=cfg.bias_lr_scale,
    )  # fmt: skip
    if cfg.optimizer == "airbench":
        return AirbenchSGD(rate, **sgd)
    if cfg.optimizer == "muon":
        return AirbenchMuon(
            rate, muon_learning_rate=cfg.muon_learning_rate, muon_momentum=cfg.muon_momentum,
            whiten_bias_steps=whiten_bias_steps, **sgd,
        )  # fmt: skip
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


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
