"""The compose stack's Prometheus (docker/prometheus/): its config and alert rules pass promtool
and their unit tests, the model server's /metrics passes promtool's lint, and a real Prometheus
scrapes a real model server with the rules loaded. Needs Debian's `prometheus` package."""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cifar10_mlops.serving.metrics import Metrics
from cifar10_mlops.stages import register
from helpers import REPO, stage_args
from servers import BIN, answers, env_with_bin, free_port, start, stop, wait_for

CONFIG = REPO / "docker" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CIFAR10_REQUIRE_SERVICES") == "1":
            pytest.fail("no promtool: apt-get install prometheus")
        pytest.skip("no promtool (apt-get install prometheus)")
    return found


def run(*cmd, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_the_config_and_the_alert_rules_are_valid_and_pass_their_unit_tests(promtool):
    for check in (["check", "config"], ["check", "rules"], ["test", "rules"]):
        name = {"config": "prometheus.yml"}.get(check[1], "alerts.yml")
        if check[0] == "test":
            name = "alerts.test.yml"
        done = run(promtool, *check, CONFIG / name)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in run(promtool, "check", "rules", CONFIG / "alerts.yml").stdout


def test_the_model_servers_metrics_pass_promtools_lint(promtool):
    metrics = Metrics()
    metrics.predicted(np.eye(10)[[3, 3, 5]] * 0.9 + 0.01)
    metrics.requests.labels("/invocations", "200").inc()
    metrics.latency.labels("/invocations").observe(0.2)
    metrics.serving("cifar10-cnn", 2, "m-1", "models:/cifar10-cnn/2")
    metrics.drift = lambda: {"score": 0.07, "detected": True, "checked": 1.8e9}
    done = run(promtool, "check", "metrics", stdin=metrics.text().decode())
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]


@pytest.mark.extended  # a model server and Prometheus: 1 min in the full suite
@pytest.mark.long(seconds=60)
def test_prometheus_scrapes_the_model_server_and_loads_the_alerts(promtool, candidate, tmp_path):
    candidate(0.6)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    port, log = free_port(), tmp_path / "serve.log"
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    serve = [BIN / "cifar10-mlops", "serve", "--params", candidate.params, "--port", port]
    server = start(serve, log, env, Path.cwd())
    folder = tmp_path / "prometheus"
    folder.mkdir()
    shutil.copy(CONFIG / "alerts.yml", folder)
    config = (CONFIG / "prometheus.yml").read_text()
    config = re.sub(r"(scrape|evaluation)_interval: 15s", r"\1_interval: 1s", config)
    (folder / "prometheus.yml").write_text(config.replace("model-server:5001", f"127.0.0.1:{port}"))
    web = free_port()
    prometheus = None
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "model server", server, log)
        prometheus = start(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
            folder / "prometheus.log", dict(os.environ), folder,
        )  # fmt: skip
        base = f"http://127.0.0.1:{web}"
        wait_for(
            lambda: answers(f"{base}/-/ready"), "Prometheus", prometheus, folder / "prometheus.log"
        )
        body = json.dumps({"inputs": np.zeros((3, 32, 32, 3), int).tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"content-type": "application/json"}
        )
        assert urllib.request.urlopen(request, timeout=60).status == 200

        def scraped() -> bool:
            found = query(base, 'cifar10_requests_total{route="/invocations",status="200"}')
            return bool(found) and float(found[0]["value"][1]) == 1

        wait_for(scraped, "the prediction in Prometheus", prometheus, folder / "prometheus.log")
        [up] = query(base, 'up{job="model-server"}')
        assert up["value"][1] == "1"
        [images] = query(base, "cifar10_images_per_request_sum")
        assert images["value"][1] == "3"
        [model] = query(base, "cifar10_model_info")
        assert model["metric"]["version"] == "1" and model["metric"]["name"] == "cifar10-cnn"
        rules = json.loads(urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10).read())
        [group] = rules["data"]["groups"]
        assert {r["name"] for r in group["rules"]} == {
            "ModelServerDown", "ModelServerErrors", "ModelInputDrift", "DriftTestStale",
            "ChampionReloadFailing",
        }  # fmt: skip
        time.sleep(2)  # two evaluations with the server up and no drift: nothing fires
        alerts = json.loads(urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=10).read())
        assert alerts["data"]["alerts"] == []
        assert all(r["health"] == "ok" for r in group["rules"]), group["rules"]
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(server)
