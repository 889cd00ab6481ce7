"""The optimizers a recipe names: Keras' Adam and SGD, airbench94's Nesterov SGD
(AirbenchSGD) and airbench94_muon's Muon on the conv kernels (AirbenchMuon)."""

from __future__ import annotations

import keras
from keras import ops

from cifar10_mlops.core.settings import TrainConfig
from cifar10_mlops.training.model import WHITEN_LAYER


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
