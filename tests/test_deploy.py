"""The scheduled retraining deployment (flows/deploy.py) on a real Prefect server on 127.0.0.1.

Starts `prefect server start` with its own database, serves the deployment from a copy of
the reproduced tiny pipeline, checks the schedule and the concurrency limit, then triggers two
runs at once: both complete, one after the other.
"""

import os
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from conftest import run_dvc, tiny_params
from servers import BIN, answers, free_port, start, stop, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def prefect_server(tmp_path):
    """A Prefect server on a free port of 127.0.0.1; yields the environment that uses it."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = tmp_path / "prefect-server.log"
    server = start(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log, env, tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: answers(f"{api}/health"), "Prefect server", server, log)
        yield env
    finally:
        stop(server)


def test_served_deployment_is_scheduled_limited_to_one_and_runs(
    prefect_server, reproduced, tmp_path
):
    project = reproduced
    before = yaml.safe_load((project / "reports" / "registry.json").read_text())["version"]
    env = {**prefect_server, "CIFAR10_SOURCE": os.environ["CIFAR10_SOURCE"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    cfg = tiny_params()["retrain"]
    log = tmp_path / "deployment.log"
    served = start([sys.executable, "-m", "flows.deploy"], log, env, project)
    try:
        wait_for(lambda: "is being served" in log.read_text(), "deployment", served, log)
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
            get_client(sync_client=True) as client,
        ):
            deployment = client.read_deployment_by_name(f"retrain/{cfg['deployment']}")
            [schedule] = deployment.schedules
            assert schedule.schedule.cron == cfg["cron"]
            assert schedule.schedule.timezone == cfg["timezone"] and schedule.active
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.parameters == {"force": cfg["force"]}

            runs = [client.create_flow_run_from_deployment(deployment.id) for _ in range(2)]
            deadline = time.monotonic() + 420
            while True:
                runs = [client.read_flow_run(r.id) for r in runs]
                if all(r.state.type.value in TERMINAL for r in runs):
                    break
                assert served.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, [r.state for r in runs]
                time.sleep(2)
    finally:
        stop(served)

    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], log.read_text()[-3000:]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time  # never two retrains at once
    # both runs were forced (deployment parameter): each registered a version and is recorded
    # as a DVC experiment, and the workspace is as the last commit left it
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    versions = mlflow.MlflowClient().search_model_versions("name = 'cifar10-cnn'")
    recorded = {v.tags.get("dvc_experiment") for v in versions if int(v.version) > before}
    assert len(versions) == before + 2 and None not in recorded
    shown = run_dvc(project, "exp", "list", "--name-only").stdout.split()
    assert sorted(shown) == sorted(recorded)
    assert yaml.safe_load((project / "reports" / "registry.json").read_text())["version"] == before
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=project, capture_output=True, text=True, check=True)  # fmt: skip
    assert status.stdout == ""
    assert "Data and pipelines are up to date" in run_dvc(project, "status").stdout
