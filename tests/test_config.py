from pathlib import Path

import pytest
import yaml

from cifar10_mlops.config import ConfigError, Params, flatten, load_params
from conftest import REPO, tiny_params


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repository_params_load_as_typed_config():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.download.checksum == "md5:c58f30108f718f92721af3b95e74349a"
    assert params.prepare.val_fraction == 0.1
    assert params.train.augment.crop == 2
    assert params.train.architecture == "fast"


def test_flatten_gives_dotted_keys_for_mlflow():
    flat = flatten(load_params(REPO / "params.yaml"))
    assert flat["train.augment.crop"] == 2
    assert flat["seed"] == 42
    assert not any(isinstance(v, dict) for v in flat.values())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train.epoch": 3}, "unknown key train.epoch"),
        ({"train.augment.rotate": 3}, "unknown key train.augment.rotate"),
        ({"train.epochs": "ten"}, "train.epochs: expected int, got str 'ten'"),
        ({"train.epochs": 2.5}, "train.epochs: expected int, got float"),
        ({"train.batch_size": True}, "train.batch_size: expected int, got bool"),
        ({"train.epochs": 0}, "train.epochs: must be >= 1, got 0"),
        (
            {"train.architecture": "resnet"},
            "train.architecture: must be one of baseline, deeper, fast",
        ),
        ({"train.lr_schedule": "linear"}, "train.lr_schedule: must be one of step, cosine"),
        ({"train.label_smoothing": 1.0}, "train.label_smoothing: must be in [0, 1), got 1.0"),
        ({"train.warmup_epochs": -1}, "train.warmup_epochs: must be >= 0, got -1"),
        ({"train.augment.crop": 20}, "train.augment.crop: must be in [0, 16] pixels, got 20"),
        (
            {"train.architecture": "fast"},
            "tune.space.dense_units: the fast architecture has no hidden dense layer",
        ),
        ({"prepare.val_fraction": 1.5}, "prepare.val_fraction: must be in (0, 1)"),
        ({"download.checksum": "md5:xyz"}, "download.checksum: expected 'md5:<32 hex>'"),
        ({"train.augment": [1, 2]}, "train.augment: expected a mapping, got list"),
    ],
)
def test_bad_params_name_the_file_and_key(tmp_path, override, message):
    path = write(tmp_path, tiny_params(**override))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_missing_key_is_an_error_not_a_silent_default(tmp_path):
    params = tiny_params()
    del params["train"]["learning_rate"]
    with pytest.raises(ConfigError, match="missing key train.learning_rate"):
        load_params(write(tmp_path, params))


def test_integer_is_accepted_where_a_float_is_expected(tmp_path):
    params = load_params(write(tmp_path, tiny_params(**{"train.learning_rate": 1})))
    assert params.train.learning_rate == 1.0 and isinstance(params.train.learning_rate, float)


def test_stage_exits_with_one_line_error_before_any_work(tmp_path, run_module):
    path = write(tmp_path, tiny_params(**{"train.epochs": -1}))
    result = run_module(
        "cifar10_mlops.download", "--params", str(path), "--out", str(tmp_path / "raw")
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: train.epochs: must be >= 1, got -1"
    ]
    assert not (tmp_path / "raw").exists()
