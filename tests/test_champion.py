"""`cifar10-mlops serve` follows the champion alias and reports what it does at /metrics: on the
real server, with a real MLflow store, while a client keeps asking."""

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from cifar10_mlops.core import artifacts
from cifar10_mlops.serving.champion import Champion
from cifar10_mlops.serving.metrics import Metrics
from cifar10_mlops.stages import register
from helpers import stage_args
from servers import BIN, answers, env_with_bin, free_port, start, stop, wait_for

NAME = "cifar10-cnn"
ONE_IMAGE = json.dumps({"inputs": np.full((1, 32, 32, 3), 9).tolist()}).encode()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return answer.read()


def predict(port: int, body: bytes = ONE_IMAGE) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert len(json.loads(answer.read())["predictions"]) == 1
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def metric(text: str, name: str, /, **labels) -> float:
    """The value of the sample `name{labels}` in Prometheus text; labels in any order."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        metric_name, _, label_text = sample.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if metric_name == name and all(found.get(k) == str(v) for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no {name}{labels} in the metrics")


def served_version(port: int) -> int | None:
    return json.loads(get(port, "/version"))["model"]["version"]


def registered(candidate, accuracy: float) -> dict:
    candidate(accuracy)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    return json.loads(Path("reports/registry.json").read_text())


def tamper(version: int) -> None:
    """Change the code MLflow would run on loading `version`, in the artifact store."""
    client = mlflow.MlflowClient()
    model_id = artifacts.model_id_of(client.get_model_version(NAME, str(version)))
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    code = next(folder.rglob("pyfunc.py"))
    code.write_text(code.read_text() + "\nprint('planted')\n")


@pytest.mark.integration
@pytest.mark.extended  # a model server and three registrations: 1 min alone
@pytest.mark.long(seconds=60)
def test_a_promotion_is_served_without_a_failed_request_and_a_bad_one_is_not(candidate, tmp_path):
    assert registered(candidate, 0.5)["champion"] == 1
    port, log = free_port(), tmp_path / "serve.log"
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    cmd = [BIN / "cifar10-mlops", "serve", "--port", port, "--reload-seconds", "0.5"]
    server = start(cmd, log, env, Path.cwd())
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "model server", server, log)
        assert served_version(port) == 1
        statuses, asking = [], threading.Event()
        asking.set()

        def client():
            while asking.is_set():
                statuses.append(predict(port))

        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert registered(candidate, 0.95)["champion"] == 2  # the gate promotes it
        deadline = time.monotonic() + 60
        while served_version(port) != 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)  # requests on the new model too
        asking.clear()
        for thread in threads:
            thread.join(timeout=60)
        assert len(statuses) > 5 and set(statuses) == {200}, statuses
        text = get(port, "/metrics").decode()
        assert metric(text, "cifar10_model_info", name=NAME, version=2) == 1
        assert metric(text, "cifar10_model_reloads_total", outcome="loaded") == 1
        assert metric(text, "cifar10_requests_total", route="/invocations", status=200) == len(
            statuses
        )
        assert metric(text, "cifar10_images_per_request_count") == len(statuses)
        classes = sum(
            metric(text, "cifar10_predicted_class_total", **{"class": name})
            for name in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                         "horse", "ship", "truck")
        )  # fmt: skip
        assert classes == len(statuses) == metric(text, "cifar10_top1_confidence_count")

        # a champion whose artifacts were changed is refused: v2 serves on, and says so
        assert registered(candidate, 0.2)["champion"] == 2  # the gate keeps v2
        tamper(3)
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "3")
        deadline = time.monotonic() + 60
        while "cannot serve" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert served_version(port) == 2 and predict(port) == 200
        text = get(port, "/metrics").decode()
        assert metric(text, "cifar10_model_reload_failing") == 1
        assert metric(text, "cifar10_model_reloads_total", outcome="failed") >= 1
        assert metric(text, "cifar10_model_info", version=2) == 1
        time.sleep(2)  # four more polls: the version that failed is not tried again at once
        failures = [x for x in log.read_text().splitlines() if "cannot serve" in x]
        assert len(failures) == 1, failures
        assert "kept models:/cifar10-cnn@champion -> cifar10-cnn v2" in failures[0]
        assert "cifar10-cnn v3" in failures[0] and "sha256" in failures[0]
        assert metric(get(port, "/metrics").decode(), "cifar10_model_reload_failing") == 1
    finally:
        stop(server)


@pytest.mark.integration
def test_the_routes_are_counted_with_their_status_and_no_client_adds_labels(candidate):
    from starlette.testclient import TestClient

    from cifar10_mlops.serving.server import build_app

    registered(candidate, 0.5)
    metrics = Metrics()
    champion = Champion(f"models:/{NAME}@champion", metrics)
    with TestClient(build_app(champion, metrics), raise_server_exceptions=False) as client:
        assert client.post("/invocations", content=ONE_IMAGE, headers={"Content-Type":
                           "application/json"}).status_code == 200  # fmt: skip
        bad = client.post("/invocations", content=b"{}", headers={"Content-Type": "text/csv"})
        assert bad.status_code == 415
        for path in ("/ping", "/no-such-page", "/../../etc/passwd", "/x" * 100):
            client.get(path)
        assert client.post("/metrics").status_code == 405
        answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=")
    text = answer.text
    assert metric(text, "cifar10_requests_total", route="/invocations", status=200) == 1
    assert metric(text, "cifar10_requests_total", route="/invocations", status=415) == 1
    assert metric(text, "cifar10_requests_total", route="/ping", status=200) == 1
    assert metric(text, "cifar10_requests_total", route="other", status=404) == 3
    assert metric(text, "cifar10_request_seconds_count", route="/invocations") == 2
    assert "etc" not in text and "/x/x" not in text
    assert metric(text, "cifar10_model_info", name=NAME, version=1) == 1
    assert metric(text, "cifar10_model_reload_failing") == 0


@pytest.mark.integration
def test_a_version_that_answers_wrong_or_cannot_be_read_is_not_served(candidate, caplog):
    from types import SimpleNamespace

    from cifar10_mlops.serving.predict import load_resolved

    registered(candidate, 0.5)
    metrics = Metrics()
    champion = Champion(f"models:/{NAME}@champion", metrics)
    first = champion.current
    assert registered(candidate, 0.95)["champion"] == 2

    def five_classes(uri):
        model, source = load_resolved(uri)
        wrong = SimpleNamespace(predict=lambda data, params=None: np.ones((len(data), 5)))
        return wrong, source

    champion.load = five_classes
    assert not champion.reload() and champion.current is first
    assert "cifar10-cnn v2" in caplog.text and "with shape (1, 5), not (1, 10)" in caplog.text
    assert metrics.reload_failing._value.get() == 1
    champion.load = load_resolved
    assert not champion.reload()  # v2 failed lately: not tried at every poll

    client = mlflow.MlflowClient()
    model_id = artifacts.model_id_of(client.get_model_version(NAME, "2"))
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    hidden = folder.rename(folder.with_name("hidden"))
    champion._failed = None  # as after RETRY_FAILED_SECONDS
    caplog.clear()
    assert not champion.reload() and champion.current is first
    assert "cannot serve models:/cifar10-cnn@champion -> cifar10-cnn v2" in caplog.text

    hidden.rename(folder)  # readable again
    champion._failed = None
    assert champion.reload() and champion.current[1].version == 2
    assert metrics.reload_failing._value.get() == 0
