"""What `tune.space` may say (core/search_space.py): a range or list of choices per searched
value, refused in one line naming the entry when it cannot be searched."""

import pytest

from cifar10_mlops.core.settings import ConfigError, load_params, replace_checked
from helpers import REPO


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"conv_1_filters": {"min": 64, "max": 32, "step": 16}},
            "tune.space.conv_1_filters: inverted range, min 64 > max 32",
        ),
        (
            {"learning_rate": {"min": 0.1, "max": 0.1, "sampling": "log"}},
            "tune.space.learning_rate: empty range, min == max == 0.1 (set the entry to null to "
            "keep the train value)",
        ),
        (
            {"conv_1_filters": {"min": 16, "max": 64, "step": 64}},
            "tune.space.conv_1_filters.step: must be in [1, max - min = 48], got 64",
        ),
        (
            {"optimizer": {"values": ["adam", "adam"]}},
            "tune.space.optimizer.values: lists an optimizer twice: ['adam', 'adam']",
        ),
    ],
)
def test_an_entry_that_cannot_be_searched_is_named(entry, message):
    space = load_params(REPO / "params.yaml").tune.space
    with pytest.raises(ConfigError) as err:
        replace_checked(space, "tune.space", **entry)
    assert str(err.value) == message


def test_a_searchable_entry_is_taken_as_written():
    space = load_params(REPO / "params.yaml").tune.space
    entry = {"min": 16, "max": 64, "step": 16}
    assert vars(replace_checked(space, "tune.space", conv_1_filters=entry).conv_1_filters) == entry
