"""The building blocks of the settings (core/fields.py): sections that cannot change once
loaded and refuse keys they do not declare, and bounds told as the interval they declare."""

from typing import Annotated

import pydantic
import pytest

from cifar10_mlops.core.fields import F, Section, within
from cifar10_mlops.core.settings import ConfigError, load_params, replace_checked
from helpers import REPO


class Share(Section):
    """A section declared as settings.py declares them."""

    share: Annotated[float, within("(0, 1)")] = F("a share of the images")


def test_loaded_settings_cannot_be_changed_in_place():
    train = load_params(REPO / "params.yaml").train
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        train.epochs = 3
    assert replace_checked(train, "train", epochs=3).epochs == 3  # a checked copy instead


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"share": 0.0}, "box.share: must be in (0, 1), got 0.0"),
        ({"share": 1}, "box.share: must be in (0, 1), got 1"),
        ({"share": "0.5"}, "box.share: expected float, got str '0.5'"),
        ({"shares": 0.5}, "unknown key box.shares (known: share)"),
    ],
)
def test_a_section_refuses_what_it_does_not_declare_naming_the_key(values, message):
    assert replace_checked(Share(share=0.5), "box", share=0.25).share == 0.25
    with pytest.raises(ConfigError) as err:
        replace_checked(Share(share=0.5), "box", **values)
    assert str(err.value) == message
