"""The training code `train` and `tune` share: schedules, the input pipeline, and
airbench94's training ingredients, each checked by what a user would notice."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_mlops import fit
from cifar10_mlops.settings import AugmentConfig, load_params
from cifar10_mlops.fit import AirbenchSGD, Lookahead, Triangle, make_dataset
from cifar10_mlops.model import WHITEN_LAYER
from conftest import REPO


def test_step_schedule_reproduces_the_studys_first_phase():
    # Study §4.2: Adam at 1e-3, divided by 10 after the tenth epoch and kept at 1e-4.
    cfg = load_params(REPO / "params.yaml").train
    study = cfg.model_copy(
        update=dict(learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.1, lr_min=1e-4)
    )
    lrs = [fit.step_schedule(study)(epoch) for epoch in range(30)]
    assert lrs[:10] == [1e-3] * 10
    assert lrs[10:] == pytest.approx([1e-4] * 20)
    halving = cfg.model_copy(
        update=dict(learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.5, lr_min=0.0)
    )
    assert fit.step_schedule(halving)(25) == pytest.approx(2.5e-4)  # study §4.3


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = load_params(REPO / "params.yaml").train
    cfg = cfg.model_copy(update=dict(learning_rate=0.2, lr_min=0.0, warmup_epochs=1.0, epochs=4))
    schedule = fit.cosine_schedule(cfg, steps_per_epoch=10)
    lrs = [float(schedule(step)) for step in range(41)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.2)
    assert lrs[25] == pytest.approx(0.1)  # half-way through the decay
    assert lrs[40] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_augmented_dataset_yields_shuffled_uint8_batches_with_one_hot_labels():
    x = np.arange(20, dtype=np.uint8).repeat(32 * 32 * 3).reshape(20, 32, 32, 3)
    y = np.arange(20, dtype=np.uint8) % 10
    cfg = load_params(REPO / "params.yaml").train.augment
    cfg = cfg.model_copy(update=dict(crop=0, horizontal_flip=False))
    batches = list(fit.make_dataset(x, y, 5, seed=0, augment=cfg).take(4))  # one epoch
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5]
    assert batches[0][0].dtype == "uint8"
    order = np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches])  # image i is all i
    assert sorted(order) == list(range(20)) and list(order) != list(range(20))
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels, np.eye(10)[order % 10])


AUGMENT = AugmentConfig(
    rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, crop=0, horizontal_flip=True,
    alternating_flip=True,
)  # fmt: skip


def _marked_images(n):
    """Image i carries its index in the top-left pixel: mirrored, it is the top-right one."""
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = 1 + np.arange(n) % 250
    images[:, 0, 0, 1] = np.arange(n) // 250
    return images


def _flips_per_image(augment, n=200, batch=50, epochs=6):
    dataset = make_dataset(_marked_images(n), np.zeros(n), batch, seed=3, augment=augment)
    flips = np.zeros(n, int)
    seen = np.zeros(n, int)
    for images, _ in dataset.take(epochs * n // batch):
        images = images.numpy()
        flipped = images[:, 0, 0, 0] == 0
        corner = np.where(flipped[:, None], images[:, 0, 31, :2], images[:, 0, 0, :2])
        index = (corner[:, 0].astype(int) - 1) + 250 * corner[:, 1].astype(int)
        np.add.at(flips, index, flipped)
        np.add.at(seen, index, 1)
    return flips, seen


def test_alternating_flip_mirrors_each_image_on_exactly_every_other_epoch():
    flips, seen = _flips_per_image(AUGMENT)
    assert (seen == 6).all()  # every image once per epoch, in a new order each epoch
    assert (flips == 3).all()
    # Random flipping (the ablation) gives some images more and some fewer.
    flips, _ = _flips_per_image(AugmentConfig(**{**vars(AUGMENT), "alternating_flip": False}))
    assert flips.min() < 3 < flips.max()


def test_training_epochs_drop_the_last_partial_batch_and_reshuffle():
    dataset = make_dataset(_marked_images(130), np.arange(130), 50, seed=0, augment=AUGMENT)
    epochs = [[b[1].numpy().argmax(1) for b in dataset.skip(2 * e).take(2)] for e in range(2)]
    assert [len(b) for b in epochs[0]] == [50, 50]  # 130 images: 2 whole batches per epoch
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))


def test_a_set_smaller_than_one_batch_trains_on_all_of_it_each_epoch():
    # A search subset (tune.train_per_class) below the batch size: one partial batch per
    # epoch, every image in it, reshuffled, rather than an epoch of no steps.
    labels = np.arange(30) % 10  # 3 images of each class
    dataset = make_dataset(_marked_images(30), labels, 50, seed=0, augment=AUGMENT)
    epochs = [b[1].numpy().argmax(1) for b in dataset.take(2)]
    assert fit.steps_per_epoch(30, 50) == 1
    assert [np.bincount(e, minlength=10).tolist() for e in epochs] == [[3] * 10] * 2
    assert not np.array_equal(epochs[0], epochs[1])


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


def test_lookahead_ends_on_the_averaged_weights():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    weight = model.layers[0].kernel
    weight.assign([[0.0]])
    lookahead = Lookahead(total_steps=10, every=5)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    trajectory = []
    for step in range(1, 11):
        weight.assign(weight.numpy() + 1.0)  # what an optimizer step would do
        trajectory.append(float(weight.numpy()[0, 0]))
        lookahead.on_train_batch_end(step - 1)
    # At step 5 the average (still 0) moves by 1 - decay toward w = 5 and w jumps to it.
    decay5 = 0.95**5 * 0.5**3
    at5 = (1 - decay5) * 5.0
    assert trajectory[5] == pytest.approx(at5 + 1)
    # At step 10 (decay 0.95**5) the same from there; training ends on that average.
    decay10 = 0.95**5
    at10 = decay10 * at5 + (1 - decay10) * (at5 + 5)
    assert float(weight.numpy()[0, 0]) == pytest.approx(at10)
    weight.assign([[100.0]])  # a last step after the last pull is undone at the end
    lookahead.on_train_end()
    assert float(weight.numpy()[0, 0]) == pytest.approx(at10)


def test_triangle_schedule_rises_to_the_peak_then_falls_to_the_end_fraction():
    schedule = Triangle(10.0, 0.2, 0.07, warmup=10, total=100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates == pytest.approx([2.0, 6.0, 10.0, 10 * (1 - 0.93 / 2), 0.7], rel=1e-5)
    # No warm-up (airbench94_muon): from the peak straight down to the end fraction.
    schedule = Triangle(10.0, 1.0, 0.0, warmup=0, total=100)
    assert [float(schedule(step)) for step in (0, 50, 100)] == pytest.approx([10.0, 5.0, 0.0])


def test_the_whitening_bias_trains_for_its_epochs_then_stays_frozen():
    cfg = load_params(REPO / "params.yaml").train.model_copy(update=dict(
        conv_1_filters=8, conv_2_filters=8, conv_3_filters=8, batch_size=32, epochs=3,
        whiten_bias_epochs=1, lookahead=False,
    ))  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 128)
    model = fit.compile_model(cfg, x)
    bias = model.get_layer(WHITEN_LAYER).bias
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(bias.numpy().copy())

    model.fit(
        make_dataset(x, y, 32, seed=0, augment=cfg.augment), epochs=3, steps_per_epoch=4,
        callbacks=[*fit.training_callbacks(cfg, None), Record()], verbose=0,
    )  # fmt: skip
    assert np.abs(seen[0]).max() > 0  # trained in epoch 1 (it starts at zero)
    np.testing.assert_array_equal(seen[1], seen[0])  # frozen from epoch 2 on
    np.testing.assert_array_equal(seen[2], seen[0])


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
    out = keras.ops.convert_to_numpy(fit.orthogonalize(tf.constant(matrix)))
    core = (u.T[:8] @ out @ v[:, :8]) if shape[0] > shape[1] else (u.T @ out @ v[:, :8])
    values = np.diag(core)
    assert values.min() > 0.5 and values.max() < 1.3, values
    assert np.abs(core - np.diag(values)).max() < 1e-3  # no new directions


def _muon(**kwargs):
    settings = dict(
        muon_learning_rate=0.24, muon_momentum=0.6, momentum=0.85, weight_decay=0.0,
        peak_learning_rate=100.0, batch_size=1024, bias_lr_scale=0.25,
    )  # fmt: skip
    return fit.AirbenchMuon(100.0, **{**settings, **kwargs})


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
        fit.orthogonalize(tf.constant(gradients[0].reshape(-1, 4)))
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
