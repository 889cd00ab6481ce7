"""The callbacks a recipe trains with, by what they leave in the model."""

import keras
import numpy as np
import pytest

from cifar10_mlops.core.settings import load_params
from cifar10_mlops.training import callbacks, network
from cifar10_mlops.training.callbacks import Lookahead
from cifar10_mlops.training.data import make_dataset
from cifar10_mlops.training.model import WHITEN_LAYER
from helpers import REPO


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


def test_the_whitening_bias_trains_for_its_epochs_then_stays_frozen():
    cfg = load_params(REPO / "params.yaml").train.model_copy(update=dict(
        conv_1_filters=8, conv_2_filters=8, conv_3_filters=8, batch_size=32, epochs=3,
        whiten_bias_epochs=1, lookahead=False,
    ))  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 128)
    model = network.compile_model(cfg, x)
    bias = model.get_layer(WHITEN_LAYER).bias
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(bias.numpy().copy())

    model.fit(
        make_dataset(x, y, 32, seed=0, augment=cfg.augment), epochs=3, steps_per_epoch=4,
        callbacks=[*callbacks.training_callbacks(cfg, None), Record()], verbose=0,
    )  # fmt: skip
    assert np.abs(seen[0]).max() > 0  # trained in epoch 1 (it starts at zero)
    np.testing.assert_array_equal(seen[1], seen[0])  # frozen from epoch 2 on
    np.testing.assert_array_equal(seen[2], seen[0])
