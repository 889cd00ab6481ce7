"""What every process running trials sets up (stages/tune/trials.py), the stage and a worker
alike: the same images from the same seed, and the search's budget and early stopping."""

import numpy as np

from cifar10_mlops.core.settings import params_from_dict
from cifar10_mlops.core.splits import load_split
from cifar10_mlops.stages.tune.trials import prepare_search
from helpers import tiny_params


def test_processes_with_the_same_settings_search_the_same_images(prepared):
    params = params_from_dict(
        tiny_params(**{"tune.train_per_class": 5, "tune.early_stopping_patience": 1})
    )
    search = prepare_search(params, prepared)
    assert np.bincount(search.labels).tolist() == [5] * 10  # tune.train_per_class of each class
    assert np.array_equal(prepare_search(params, prepared).images, search.images)
    assert all(np.array_equal(a, b) for a, b in zip(search.val, load_split(prepared, "val")))
    assert search.kwargs["epochs"] == params.tune.max_epochs
    assert [type(c).__name__ for c in search.kwargs["callbacks"]] == ["EarlyStopping"]
    other = params_from_dict(tiny_params(**{"tune.train_per_class": 5, "tune.seed": 7}))
    assert not np.array_equal(prepare_search(other, prepared).images, search.images)
