"""airbench's optimizers in Keras: the steps AirbenchSGD and AirbenchMuon take."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_mlops.training import optimizers
from cifar10_mlops.training.model import WHITEN_LAYER
from cifar10_mlops.training.optimizers import AirbenchSGD


def _one_step(optimizer, gradient, values):
    variables = {name: keras.Variable(value, name=name) for name, value in values.items()}
    before = {name: v.numpy().copy() for name, v in variables.items()}
    optimizer.apply([tf.constant(gradient)] * len(variables), list(variables.values()))
    return {name: v.numpy() - before[name] for name, v in variables.items()}


def test_airbench_sgd_steps_in_airbench_units_and_scales_batchnorm_biases():
    lr, momentum, batch = 11.5, 0.85, 512
    optimizer = AirbenchSGD(
        lr, momentum=momentum, weight_decay=0.0, peak_learning_rate=lr,
        batch_size=batch, bias_lr_scale=64.0,
    )  # fmt: skip
    delta = _one_step(optimizer, [1.0, -2.0], {"kernel": [0.5, 0.5], "beta": [0.5, 0.5]})
    # Keras step = lr x batch/1024 x (1-m)/(2-m); Nesterov's first step is (1 + m) of it.
    step = lr * batch / 1024 * (1 - momentum) / (2 - momentum) * (1 + momentum)
    np.testing.assert_allclose(delta["kernel"], [-step, 2 * step], rtol=1e-5)
    np.testing.assert_allclose(delta["beta"], 64 * delta["kernel"], rtol=1e-5)


def test_airbench_weight_decay_is_l2_through_the_momentum_and_not_scaled_for_biases():
    lr, m, wd = 11.5, 0.85, 0.0153
    optimizer = AirbenchSGD(
        lr, momentum=m, weight_decay=wd, peak_learning_rate=lr,
        batch_size=1024, bias_lr_scale=64.0,
    )  # fmt: skip
    kernel, beta = keras.Variable([2.0], name="kernel"), keras.Variable([2.0], name="beta")
    zero = tf.constant([0.0])
    for _ in range(2):
        optimizer.apply([zero, zero], [kernel, beta])
    # No gradient: each step's force is the decay alone, wd (per 1024 examples at the peak
    # rate) x w x (1-m)/(2-m), fed through Nesterov momentum like a gradient (PyTorch's
    # coupled decay; Keras' decoupled weight_decay would bypass the momentum).
    rate = wd * (1 - m) / (2 - m)
    w, buffer = 2.0, 0.0
    for _ in range(2):
        force = rate * w
        buffer = m * buffer - force
        w = w + m * buffer - force
    assert float(kernel.numpy()[0]) == pytest.approx(w, rel=1e-6)
    assert float(beta.numpy()[0]) == pytest.approx(w, rel=1e-6)  # biases: same decay


def _conditioned(rows: int, cols: int, singular_values, seed: int = 0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    s = np.zeros((rows, cols))
    np.fill_diagonal(s, singular_values)
    return u, v, (u @ s @ v.T).astype(np.float32)


@pytest.mark.parametrize("shape", [(36, 8), (8, 36)])
def test_orthogonalize_keeps_the_singular_vectors_and_pulls_the_values_toward_one(shape):
    # A gradient whose singular values span 50x comes out with every direction within 2x of
    # unit scale, in the same directions: Muon's whitened update.
    u, v, matrix = _conditioned(*shape, np.geomspace(50, 1, 8))
    out = keras.ops.convert_to_numpy(optimizers.orthogonalize(tf.constant(matrix)))
    core = (u.T[:8] @ out @ v[:, :8]) if shape[0] > shape[1] else (u.T @ out @ v[:, :8])
    values = np.diag(core)
    assert values.min() > 0.5 and values.max() < 1.3, values
    assert np.abs(core - np.diag(values)).max() < 1e-3  # no new directions


def _muon(**kwargs):
    settings = dict(
        muon_learning_rate=0.24, muon_momentum=0.6, momentum=0.85, weight_decay=0.0,
        peak_learning_rate=100.0, batch_size=1024, bias_lr_scale=0.25,
    )  # fmt: skip
    return optimizers.AirbenchMuon(100.0, **{**settings, **kwargs})


def test_muon_moves_a_conv_kernel_at_its_own_rate_along_the_orthogonalised_gradient():
    rng = np.random.default_rng(1)
    kernel = keras.Variable(rng.normal(size=(3, 3, 2, 4)).astype(np.float32), name="kernel")
    head = keras.Variable(np.ones((4, 2), np.float32), name="kernel")
    beta = keras.Variable(np.zeros(4, np.float32), name="beta")
    before = kernel.numpy().copy()
    gradients = [rng.normal(size=v.shape).astype(np.float32) for v in (kernel, head, beta)]
    _muon().apply([tf.constant(g) for g in gradients], [kernel, head, beta])
    # The kernel is first rescaled to norm sqrt(filters) = 2, then moved by 0.24 x the
    # orthogonalised gradient (Nesterov's first step is a multiple of it; the scale drops out).
    expected = before * 2 / np.linalg.norm(before) - 0.24 * keras.ops.convert_to_numpy(
        optimizers.orthogonalize(tf.constant(gradients[0].reshape(-1, 4)))
    ).reshape(before.shape)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-4, atol=1e-5)
    # Everything else steps as AirbenchSGD: the classifier at the rate, biases at 1/4 of it.
    step = 100.0 * (1 - 0.85) / (2 - 0.85) * (1 + 0.85)
    np.testing.assert_allclose(head.numpy() - 1, -step * gradients[1], rtol=1e-4)
    np.testing.assert_allclose(beta.numpy(), -step / 4 * gradients[2], rtol=1e-4)


def test_muon_winds_the_whitening_bias_rate_down_to_zero_over_its_steps():
    whiten = keras.layers.Conv2D(2, 2, name=WHITEN_LAYER)
    whiten.build((None, 4, 4, 3))
    optimizer = _muon(momentum=0.0, whiten_bias_steps=2)
    moves = []
    for _ in range(4):
        before = whiten.bias.numpy().copy()
        optimizer.apply([tf.ones(2)], [whiten.bias])
        moves.append(float(before[0] - whiten.bias.numpy()[0]))
    # bias rate 100/4 x (1 - step/2) at steps 0, 1, then 0 (momentum 0: gain 1/2 x batch/1024)
    assert moves == pytest.approx([12.5, 6.25, 0.0, 0.0], rel=1e-5)
