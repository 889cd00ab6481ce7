"""Logging to MLflow (core/tracking.py) through a real MLflow server that goes away while
`train` logs to it.

MLflow's client retries a failed request with exponential backoff (7 retries, about 4 minutes,
by default): a server restarted within that time loses nothing; one that stays down stops the
stage with one line, and the run is never reported as complete. A reply cut off halfway,
which MLflow's client does not repeat, is repeated by the stage without storing a metric twice.
"""

import http.client
import http.server
import json
import signal
import sys
import threading
import time

import mlflow
from mlflow.entities import Metric

from helpers import place_store, stage_args
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
    return len(client.get_metric_history(runs[0].info.run_id, "val/accuracy"))


def start_train(in_project, params_file, url, tmp_path, **env):
    params = params_file(
        **{"train.use_tuned": False, "train.epochs": EPOCHS, "train.early_stopping_patience": None}
    )
    log = tmp_path / "train.log"
    process = start(
        [sys.executable, "-m", "cifar10_mlops.stages.train", "--params", params,
         *stage_args("train")],
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
        for key in ("train/loss", "val/accuracy", "train/learning_rate"):
            steps = [m.step for m in client.get_metric_history(info["run_id"], key)]
            assert steps == list(range(1, EPOCHS + 1)), key


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


class CuttingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the MLflow server at `upstream`; the first `cuts` answers to a log-batch
    request stop halfway through their body, as from a server killed mid-reply."""

    upstream = ""
    cuts = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.forward()

    def do_POST(self):
        self.forward()

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        connection.request(self.command, self.path, body or None, headers)
        answer = connection.getresponse()
        data = answer.read()
        cut = self.path.endswith("/runs/log-batch") and type(self).cuts > 0
        type(self).cuts -= cut
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if cut else data)
        self.close_connection = cut


@pytest.mark.long(seconds=15)
def test_an_answer_cut_off_mid_reply_is_repeated_without_storing_twice(
    tmp_path, migrated_store, monkeypatch
):
    import mlflow
    from mlflow.exceptions import MlflowException

    from cifar10_mlops.core import tracking

    backend = f"sqlite:///{place_store(migrated_store, tmp_path / 'server.db')}"
    with mlflow_server(backend, tmp_path) as (url, _, _):
        CuttingProxy.upstream = url.removeprefix("http://")
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CuttingProxy)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
            monkeypatch.delenv("MLFLOW_TRACKING_URI")  # MLflow exports the URI it is given
            client = mlflow.MlflowClient(f"http://127.0.0.1:{proxy.server_port}")
            mlflow.set_tracking_uri(client.tracking_uri)
            run_id = client.create_run(client.create_experiment("cut")).info.run_id

            # MLflow's client does not repeat such a request, although the server stored it
            CuttingProxy.cuts = 1
            with pytest.raises(MlflowException, match="Connection broken"):
                mlflow.MlflowClient().log_batch(run_id, [Metric("plain", 1.0, 1, 0)])
            assert [m.value for m in client.get_metric_history(run_id, "plain")] == [1.0]

            CuttingProxy.cuts = 2
            tracking.log_metrics(run_id, {"loss": 0.5, "val_accuracy": 0.25}, step=3)
            assert CuttingProxy.cuts == 0
            for key, value in (("loss", 0.5), ("val_accuracy", 0.25)):
                history = client.get_metric_history(run_id, key)
                assert [(m.step, m.value) for m in history] == [(3, value)], key

            CuttingProxy.cuts = 3  # more cuts than attempts: the error reaches the stage
            with pytest.raises(MlflowException, match="Connection broken"):
                tracking.log_metrics(run_id, {"loss": 0.4}, step=4)
        finally:
            proxy.shutdown()
