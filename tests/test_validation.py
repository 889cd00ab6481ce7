"""The checks behind params.yaml (core/validation.py): a YAML loader that refuses a key given
twice or a key that is not a scalar, and still takes YAML's merge keys."""

import pytest
import yaml

from cifar10_mlops.core.settings import ConfigError, load_params
from helpers import tiny_params


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    text = yaml.safe_dump(tiny_params(), sort_keys=False)
    text = text.replace("  epochs: ", "  epochs: 3\n  epochs: ", 1)
    path.write_text(text)
    line = text.splitlines().index("  epochs: 3") + 2
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: key 'epochs' given twice (line {line})"


def test_merge_keys_are_yaml_not_repeated_keys(tmp_path):
    """DVC accepts YAML anchors and merge keys; so must the stages."""
    path = tmp_path / "params.yaml"
    text = yaml.safe_dump(tiny_params(), sort_keys=False)
    text = text.replace("evaluate:\n", "evaluate: &evaluate\n", 1) + "other:\n  <<: *evaluate\n"
    path.write_text(text)
    with pytest.raises(ConfigError, match="unknown key other"):  # parsed; then refused as a key
        load_params(path)


def test_a_key_that_is_a_list_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(), sort_keys=False) + "? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: a key that is a list \(line \d+\)"):
        load_params(path)
