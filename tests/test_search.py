"""The `tune` stage's search (stages/tune/search.py): settings a search would only trip over
later are refused before any trial."""

import pytest

from cifar10_mlops.core.errors import ConfigError
from helpers import tune_cli


def test_budget_that_admits_nothing_is_an_error(in_project, prepared, params_file):
    with pytest.raises(ConfigError, match="tune.max_mflops: 0.1 admits no configuration"):
        tune_cli(params_file, **{"tune.max_mflops": 0.1})
    assert not (in_project / "models").exists()
