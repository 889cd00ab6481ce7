"""A real MLflow server that goes away while `train` logs to it.

MLflow's client retries a failed request with exponential backoff (7 retries, about 4 minutes,
by default): a server restarted within that time loses nothing; one that stays down stops the
stage with one line, and the run is never reported as complete.
"""

import json
import signal
import sys
import time

import mlflow

from conftest import place_store, stage_args
from servers import env_with_bin, free_port, mlflow_server, start, stop, tail, wait_for
import pytest

pytestmark = pytest.mark.integration

EPOCHS = 30


def logged_steps(url: str) -> int:
    """Epochs of val_accuracy the server holds for the newest train run."""
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("cifar10-cnn")
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], max_results=1)
    if not runs:
        return 0
    return len(client.get_metric_history(runs[0].info.run_id, "val_accuracy"))


def start_train(in_project, params_file, url, tmp_path, **env):
    params = params_file(
        **{"train.use_tuned": False, "train.epochs": EPOCHS, "train.early_stopping_patience": None}
    )
    log = tmp_path / "train.log"
    process = start(
        [sys.executable, "-m", "cifar10_mlops.train", "--params", params, *stage_args("train")],
        log, env_with_bin(MLFLOW_TRACKING_URI=url, **env), in_project,
    )  # fmt: skip
    return process, log


@pytest.mark.long(seconds=90)
@pytest.mark.extended
def test_server_restarted_mid_training_loses_no_metric(
    in_project, prepared, params_file, tmp_path, migrated_store
):
    backend = f"sqlite:///{place_store(migrated_store, tmp_path / 'server.db')}"
    port = free_port()
    with mlflow_server(backend, tmp_path, port) as (url, server, _):
        train, log = start_train(in_project, params_file, url, tmp_path)
        wait_for(lambda: logged_steps(url) >= 2, "epoch 2 in MLflow", train, log, seconds=180)
        stop(server, signal.SIGKILL)
        down_at = time.monotonic()
        time.sleep(5)  # a few failed attempts
        assert train.poll() is None, tail(log)  # still retrying, not failed
    with mlflow_server(backend, tmp_path, port):
        train.wait(timeout=300)
        assert train.returncode == 0, tail(log)
        assert time.monotonic() - down_at > 5
        info = json.loads((in_project / "models" / "run.json").read_text())
        client = mlflow.MlflowClient(url)
        run = client.get_run(info["run_id"])
        assert run.info.status == "FINISHED"
        for key in ("loss", "val_accuracy", "learning_rate"):
            steps = [m.step for m in client.get_metric_history(info["run_id"], key)]
            assert steps == list(range(EPOCHS)), key


@pytest.mark.long(seconds=55)
@pytest.mark.extended
def test_server_gone_for_good_stops_with_one_line(
    in_project, prepared, params_file, tmp_path, migrated_store
):
    backend = f"sqlite:///{place_store(migrated_store, tmp_path / 'server.db')}"
    with mlflow_server(backend, tmp_path) as (url, server, _):
        # Two quick retries instead of four minutes of them.
        train, log = start_train(
            in_project, params_file, url, tmp_path,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        )  # fmt: skip
        wait_for(lambda: logged_steps(url) >= 2, "epoch 2 in MLflow", train, log, seconds=180)
        stop(server, signal.SIGKILL)
        train.wait(timeout=120)
    assert train.returncode == 1
    last = tail(log).strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow tracking at {url} failed after retries, so the stage")
    assert "Traceback" not in tail(log, 100_000)
    assert not (in_project / "models" / "model.keras").exists()
    assert not (in_project / "models" / "run.json").exists()
