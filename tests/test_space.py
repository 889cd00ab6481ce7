"""The search space and the hypermodel (stages/tune/space.py): a trial's values in place of
train's, what a configuration costs, and values as the reports show them."""

import keras
import keras_tuner as kt
import numpy as np

from cifar10_mlops.core.settings import params_from_dict
from cifar10_mlops.stages.tune import space
from helpers import tiny_params


def test_a_trial_builds_trains_network_with_its_values_in_place_of_the_searched_ones():
    params = params_from_dict(tiny_params())
    hp = kt.HyperParameters()
    hp.Fixed("conv_1_filters", 16)
    hp.Fixed("dense_units", 32)
    hp.Fixed("optimizer", "sgd")
    images = np.zeros((32, 32, 32, 3), np.uint8)
    model = space.CnnHyperModel(params.train, params.tune.space, images, max_epochs=2).build(hp)
    assert set(hp.values) == set(space.searched(params.tune.space))  # each searched name declared
    widths = [layer.filters for layer in model.layers if hasattr(layer, "filters")]
    assert widths[:2] == [16, params.train.conv_2_filters]  # the trial's, then train's own
    units = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert units == [32, 10] and type(model.optimizer).__name__ == "SGD"  # dense, then logits


def test_cost_counts_the_network_not_keras_tuners_bookkeeping():
    train = params_from_dict(tiny_params()).train
    wider = space.mflops(train, {"conv_1_filters": 16})
    assert wider > space.mflops(train, {})
    assert space.mflops(train, {"conv_1_filters": 16, "tuner/epochs": 2, "tuner/round": 1}) == wider


def test_in_space_keeps_to_a_ranges_steps():
    spec = params_from_dict(tiny_params()).tune.space.conv_1_filters  # 8 to 16, step 8
    assert [v for v in (4, 8, 12, 16, 24) if space.in_space(v, spec)] == [8, 16]


def test_values_are_shown_to_three_significant_digits():
    assert [space.fmt(v) for v in (0.00123456, 1e-7, 64, "adam")] == [
        "0.00123",
        "1e-07",
        "64",
        "adam",
    ]
