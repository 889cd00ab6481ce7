"""params.yaml parsed into frozen settings (core/settings.py): the repository's values, dotted
keys for MLflow, and every wrong key, type or value refused in one line naming it."""

import re
from pathlib import Path

import pytest
import yaml

from cifar10_mlops.core.settings import ConfigError, Params, flatten, load_params
from helpers import REPO, tiny_params


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


def test_search_cost_cap_admits_the_default_network_and_nothing_dearer():
    # tune.max_mflops is sized to train's default network: a filter search keeps train's
    # time, and the default itself is never excluded from the search it is the first trial of.
    from cifar10_mlops.training.model import build_model, forward_mflops

    params = load_params(REPO / "params.yaml")
    c1, c2, c3 = params.train.widths
    default = forward_mflops(
        build_model("fast", conv_1_filters=c1, conv_2_filters=c2, conv_3_filters=c3)
    )
    wider = forward_mflops(
        build_model("fast", conv_1_filters=c1 + 16, conv_2_filters=c2, conv_3_filters=c3)
    )
    assert default <= params.tune.max_mflops < wider


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
        ({"train.muon_momentum": 1.0}, "train.muon_momentum: must be in [0, 1), got 1.0"),
        ({"train.muon_learning_rate": 0}, "train.muon_learning_rate: must be > 0, got 0"),
        ({"train.head": "vit"}, "train.head: must be one of airbench94, airbench94_muon"),
        ({"train.augment.crop": 20}, "train.augment.crop: must be in [0, 16] pixels, got 20"),
        (
            {"train.architecture": "fast"},
            "tune.space.dense_units: the fast architecture has no hidden dense layer",
        ),
        (
            {"tune.space.muon_learning_rate": {"min": 0.1, "max": 0.3, "sampling": "log"}},
            "tune.space.muon_learning_rate: only the muon optimizer uses it, and the search "
            "trains with adam, sgd; set it to null (-S tune.space.muon_learning_rate=null)",
        ),
        (
            {
                "tune.space.optimizer": None,
                "train.optimizer": "airbench",
                "tune.space.muon_learning_rate": {"min": 0.1, "max": 0.3, "sampling": "log"},
            },
            "search trains with airbench; set it to null (-S tune.space.muon_learning_rate=null)",
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


@pytest.mark.parametrize(
    "override",
    [
        {"tune.enabled": False},  # no search: the entry is unused, not wrong
        {"tune.space.optimizer": {"values": ["adam", "muon"]}},  # some trials use it
    ],
)
def test_a_muon_search_entry_is_allowed_where_muon_may_train(tmp_path, override):
    rate = {"tune.space.muon_learning_rate": {"min": 0.1, "max": 0.3, "sampling": "log"}}
    params = load_params(write(tmp_path, tiny_params(**rate, **override)))
    assert params.tune.space.muon_learning_rate.max == 0.3


def test_integer_is_accepted_where_a_float_is_expected(tmp_path):
    params = load_params(write(tmp_path, tiny_params(**{"train.learning_rate": 1})))
    assert params.train.learning_rate == 1.0 and isinstance(params.train.learning_rate, float)


def test_stage_exits_with_one_line_error_before_any_work(tmp_path, run_module):
    path = write(tmp_path, tiny_params(**{"train.epochs": -1}))
    result = run_module(
        "cifar10_mlops.stages.download", "--params", str(path), "--out", str(tmp_path / "raw")
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: train.epochs: must be >= 1, got -1"
    ]
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"download.timeout": float("inf")}, "download.timeout: must be a finite number, got inf"),
        ({"train.warmup_epochs": float("inf")}, "train.warmup_epochs: must be a finite number"),
        ({"train.learning_rate": float("nan")}, "train.learning_rate: must be a finite number"),
        ({"train.learning_rate": float("-inf")}, "train.learning_rate: must be a finite number"),
        ({"seed": 2**32}, "seed: must be <= 4294967295, got 4294967296"),
        ({"tune.seed": 2**40}, "tune.seed: must be <= 4294967295"),
        ({"download.timeout": 1e9}, "download.timeout: must be <= 3600.0"),
        ({"download.deadline": 0}, "download.deadline: must be > 0"),
        ({"train.batch_size": 10**7}, "train.batch_size: must be <= 65536"),
        ({"train.conv_1_filters": 100_000}, "train.conv_1_filters: must be <= 4096"),
        ({"train.epochs": 10**6}, "train.epochs: must be <= 10000"),
        ({"evaluate.batch_size": 10**6}, "evaluate.batch_size: must be <= 65536"),
        ({"tune.max_epochs": 10**6}, "tune.max_epochs: must be <= 10000"),
        ({"retrain.cron": "0 25 * * *"}, "retrain.cron: hour '25' in '0 25 * * *' is not valid"),
        ({"retrain.cron": "a b c d e"}, "retrain.cron: minute 'a' in 'a b c d e' is not valid"),
        ({"retrain.cron": "*/0 * * * *"}, "retrain.cron: minute '*/0'"),
        ({"retrain.timezone": "Mars/Olympus"}, "retrain.timezone: unknown time zone"),
        ({"retrain.timezone": "../../etc/passwd"}, "retrain.timezone: unknown time zone"),
        ({"register.model_name": "cnn@champion"}, "register.model_name: 'cnn@champion' is not"),
        ({"register.model_name": "a/b"}, "register.model_name: 'a/b' is not a name"),
        ({"register.confidence": 1.0}, "register.confidence: must be at least 0.5 and below 1"),
        ({"register.confidence": 0.2}, "register.confidence: must be at least 0.5 and below 1"),
        ({"deterministic": "yes"}, "deterministic: expected bool, got str 'yes'"),
        ({"retrain.deployment": "x y"}, "retrain.deployment: 'x y' is not a name"),
        ({"retrain.cron": "\u00b2 * * * *"}, "retrain.cron: minute '\u00b2'"),  # isdigit, not int
        ({"retrain.cron": "5-1 * * * *"}, "retrain.cron: minute '5-1'"),
        ({"retrain.timezone": "America"}, "retrain.timezone: unknown time zone 'America'"),
        ({"retrain.timezone": "x" * 5000}, "retrain.timezone: unknown time zone"),
        (
            {"tune.space.conv_1_filters": {"min": 16, "max": 10_000, "step": 16}},
            "tune.space.conv_1_filters.max: must be <= 4096",
        ),
        (
            {"tune.space.weight_decay": {"min": 0.1, "max": 2.0, "sampling": "log"}},
            "tune.space.weight_decay.max: must be < 1, got 2.0",
        ),
    ],
)
def test_values_the_code_cannot_run_are_refused(tmp_path, override, message):
    """Each of these ended in a traceback, a NaN model, an exhausted machine or a broken
    URI (models:/<name>@champion)."""
    path = write(tmp_path, tiny_params(**override))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 4294967296\n", "seed: must be <= 4294967295"),
        ("  timeout: .inf\n", "download.timeout: must be a finite number, got inf"),
        ("seed: 1\n", "key 'seed' given twice"),
    ],
)
def test_stages_refuse_them_in_one_line(tmp_path, run_module, text, message):
    path = tmp_path / "params.yaml"
    base = yaml.safe_dump(tiny_params(), sort_keys=False)
    if text.startswith("  timeout"):
        base = "\n".join(
            text.rstrip() if x.startswith("  timeout:") else x for x in base.splitlines()
        )
    elif "twice" in message:
        base += text
    else:
        base = "\n".join(text.rstrip() if x.startswith("seed:") else x for x in base.splitlines())
    path.write_text(base + "\n")
    result = run_module(
        "cifar10_mlops.stages.download", "--params", str(path), "--out", str(tmp_path / "raw")
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and message in line, line
    assert not (tmp_path / "raw").exists()
