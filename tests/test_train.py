import csv
import json
import os
import re
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest

from cifar10_mlops.core import tracking
from cifar10_mlops.stages import train
from cifar10_mlops.training import weights
from cifar10_mlops.core.files import file_digest
from helpers import error_line, stage_args


def train_cli(in_project, prepared, params_file, **overrides):
    params = params_file(**{"train.use_tuned": False, **overrides})
    train.main(["--params", str(params), *stage_args("train")])
    return json.loads((in_project / "models" / "run.json").read_text())


def test_training_writes_model_history_and_one_mlflow_run(in_project, prepared, params_file):
    info = train_cli(in_project, prepared, params_file, **{"train.epochs": 2})
    assert info["tracking_uri"] == "sqlite:///mlruns/mlflow.db"
    assert (in_project / "mlruns" / "mlflow.db").is_file()

    model = keras.models.load_model(in_project / "models" / "model.keras")
    assert model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0).shape == (1, 10)
    with open(in_project / "reports" / "train" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # epochs counted from 1, as Keras prints them
    assert set(rows[0]) == {
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
    }

    run = mlflow.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "cifar10-cnn"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["train.augment.crop"] == "2"
    assert run.data.params["prepare.val_fraction"] == "0.1"
    assert run.data.tags["data_sha256"] == "ab" * 32
    assert len(run.data.tags["git_commit"]) >= 7
    client = mlflow.MlflowClient()
    for key in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/learning_rate"):
        assert [m.step for m in client.get_metric_history(info["run_id"], key)] == [1, 2], key
    assert run.data.metrics["train/epochs"] == 2
    assert info["epoch"] == 2  # no early stopping: the last epoch's weights


def test_early_stopping_ends_training_and_keeps_the_best_epoch(in_project, prepared, params_file):
    info = train_cli(
        in_project,
        prepared,
        params_file,
        **{"train.epochs": 30, "train.early_stopping_patience": 1, "train.learning_rate": 0.5},
    )
    run = mlflow.get_run(info["run_id"])
    assert run.data.metrics["train/epochs"] < 30
    history = list(csv.DictReader(open(in_project / "reports" / "train" / "history.csv")))
    best = max(history, key=lambda r: float(r["val_accuracy"]))
    assert run.data.metrics["val/best_epoch"] == int(best["epoch"]) == info["epoch"]
    assert int(history[0]["epoch"]) == 1


def test_interrupted_training_ends_its_run_killed(in_project, prepared, params_file, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_cli(in_project, prepared, params_file)
    [run] = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    assert run.info.status == "KILLED"
    assert not (in_project / "models" / "model.keras").exists()


def test_diverging_training_stops_at_once_saves_nothing_and_fails_its_run(
    in_project, prepared, params_file, run_module
):
    """A learning rate far too high: the loss is NaN within the first steps."""
    params = str(
        params_file(**{"train.use_tuned": False, "train.epochs": 5, "train.learning_rate": 1e30})
    )
    result = run_module(
        "cifar10_mlops.stages.train", "--params", params, *stage_args("train"), cwd=in_project
    )
    assert result.returncode == 1
    [line] = [x for x in result.stderr.strip().splitlines() if x.startswith("error:")]
    assert re.match(r"error: training diverged: the loss is (nan|inf) at epoch 1, step ", line)
    assert "Traceback" not in result.stderr and "Epoch 2/5" not in result.stdout
    assert not (in_project / "models" / "model.keras").exists()
    assert not (in_project / "models" / "run.json").exists()
    mlflow.set_tracking_uri(f"sqlite:///{in_project}/mlruns/mlflow.db")
    [run] = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    assert run.info.status == "FAILED"


def test_unreachable_tracking_server_fails_before_training(
    in_project, prepared, params_file, run_module
):
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    params = str(params_file(**{"train.use_tuned": False}))
    start = time.monotonic()
    result = run_module(
        "cifar10_mlops.stages.train", "--params", params, *stage_args("train"),
        cwd=in_project, env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert result.returncode == 1 and time.monotonic() - start < 60
    assert error_line(result).startswith(f"error: MLflow tracking server {uri} is unreachable (")
    assert "Epoch 1" not in result.stdout and not (in_project / "models" / "model.keras").exists()


def test_fast_network_saves_a_portable_model_that_averages_flips(
    in_project, prepared, params_file, tmp_path
):
    train_cli(
        in_project,
        prepared,
        params_file,
        **{
            "train.architecture": "fast",
            "tune.space.dense_units": None,
            "train.tta_level": 1,
        },
    )
    # A fresh interpreter with Keras only, as `mlflow models serve` loads it: no
    # FusedBatchNormalization or other class of this package is needed.
    script = tmp_path / "load.py"
    script.write_text(
        "import sys, keras, numpy as np\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "names = {type(layer).__name__ for layer in model._flatten_layers()}\n"
        "assert 'FusedBatchNormalization' not in names, names\n"
        "x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)\n"
        "p = model.predict(x, verbose=0)\n"
        "q = model.predict(x[:, :, ::-1], verbose=0)\n"
        "assert np.allclose(p, q, atol=1e-6), 'not flip-invariant'\n"
        "print('ok', sorted(names))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), str(in_project / "models" / "model.keras")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'Add'" in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": "fast"}, "train.learning_rate: expected float, got str 'fast'"),
        ({"learning_rate": -1}, "train.learning_rate: must be > 0, got -1"),
        ({"conv_1_filters": 10**9}, "train.conv_1_filters: must be <= 4096"),
    ],
)
def test_tuned_values_are_checked_like_params(tmp_path, values, message):
    from cifar10_mlops.core.settings import load_params
    from cifar10_mlops.core.errors import PipelineError
    from helpers import REPO

    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"hyperparameters": values}))
    with pytest.raises(PipelineError) as err:
        train.with_tuned(load_params(REPO / "params.yaml").train, path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


@pytest.mark.extended  # two training processes: 1 min
def test_two_training_processes_give_the_same_weights_bit_for_bit(
    in_project, prepared, params_file, run_module
):
    """The default recipe (fast network, Muon, crop and alternating flip), shrunk: trained in
    two fresh processes, the weights, model.keras's bytes and every epoch's metrics agree."""
    params = params_file(**{
        "train.use_tuned": False, "train.architecture": "fast", "train.optimizer": "muon",
        "train.learning_rate": 5260.0, "train.weight_decay": 0.0157, "train.conv_1_filters": 8,
        "train.conv_2_filters": 16, "train.conv_3_filters": 16, "train.epochs": 2,
        "train.batch_size": 50, "train.tta_level": 2, "tune.space.dense_units": None,
    })  # fmt: skip
    runs = []
    for _ in range(2):
        result = run_module(
            "cifar10_mlops.stages.train", "--params", str(params), *stage_args("train")
        )
        assert result.returncode == 0, result.stderr[-2000:]
        info = json.loads((in_project / "models" / "run.json").read_text())
        tracking.connect(info["tracking_uri"])
        model = in_project / "models" / "model.keras"
        runs.append({
            "tag": mlflow.get_run(info["run_id"]).data.tags["weights_sha256"],
            "run.json": info["weights_sha256"],
            "file": weights.file_weights_sha256(model),
            "md5": file_digest(model, "md5"),
            "history": (in_project / "reports" / "train" / "history.csv").read_text(),
        })  # fmt: skip
    first, second = runs
    assert first["tag"] == first["run.json"] == first["file"]  # what is recorded is the file's
    assert len(first["tag"]) == 64
    assert second == first
    assert float(first["history"].splitlines()[-1].split(",")[2]) > 0.1  # it did learn
