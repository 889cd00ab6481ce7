"""The scheduled retraining deployment (flows/deploy.py) on a real Prefect server on 127.0.0.1.

Starts `prefect server start` with its own database, serves the deployment from a copy of
the reproduced tiny pipeline, checks the schedule and the concurrency limit, then triggers two
runs at once: both complete, one after the other. Then the event trigger: `publish-data` in a
fresh checkout emits the dataset event, the deployment's trigger retrains on the published
commit, and the new champion is announced through the webhook block to a local receiver.
"""

import os
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from helpers import git, git_commit_all, run_dvc, tiny_params, write_image_archive
from servers import start, stop, wait_for, webhook_receiver

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def until_ended(read, served, log, seconds: float = 900) -> list:
    """The flow runs `read()` returns, once there are some and each has ended; the serving
    process must stay up meanwhile. A retrain reproduces the tiny pipeline: on CI's 2 cores,
    beside three other test workers, one took over 7 minutes."""
    deadline = time.monotonic() + seconds
    while True:
        runs = read()
        if runs and all(r.state.type.value in TERMINAL for r in runs):
            return runs
        assert served.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, ([r.state for r in runs], log.read_text()[-3000:])
        time.sleep(2)


@pytest.mark.extended  # a Prefect server, a served flow and its runs: 4.5 min
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

            # two at once: the deployment's own (forced) parameters, and a run that retrains
            # only if something changed (nothing has: its stages are all skipped)
            created = [
                client.create_flow_run_from_deployment(deployment.id),
                client.create_flow_run_from_deployment(deployment.id, parameters={"force": False}),
            ]
            runs = until_ended(lambda: [client.read_flow_run(r.id) for r in created], served, log)
    finally:
        stop(served)

    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], log.read_text()[-3000:]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time  # never two retrains at once
    # the deployment's run was forced (its parameter): it registered one version, recorded as
    # a DVC experiment; the other registered nothing; the workspace is as the last commit left it
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    versions = mlflow.MlflowClient().search_model_versions("name = 'cifar10-cnn'")
    [recorded] = [v.tags.get("dvc_experiment") for v in versions if int(v.version) > before]
    assert len(versions) == before + 1 and recorded
    assert run_dvc(project, "exp", "list", "--name-only").stdout.split() == [recorded]
    assert yaml.safe_load((project / "reports" / "registry.json").read_text())["version"] == before
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=project, capture_output=True, text=True, check=True)  # fmt: skip
    assert status.stdout == ""
    assert "Data and pipelines are up to date" in run_dvc(project, "status").stdout


@pytest.mark.long(seconds=150)
@pytest.mark.extended
def test_a_published_dataset_triggers_a_retrain_that_announces_its_champion(
    prefect_server, pipeline, tmp_path
):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = pipeline  # nothing run yet: the first version registered becomes the champion
    run_dvc(project, "remote", "add", "--local", "--default", "local", str(tmp_path / "remote"))
    git_commit_all(project, "tiny params")
    env = {**prefect_server, "CIFAR10_SOURCE": os.environ["CIFAR10_SOURCE"]}  # not the one used
    env["RETRAIN_NOTIFY_ALLOW_PRIVATE"] = "1"  # the webhook receiver is on 127.0.0.1
    env.pop("MLFLOW_TRACKING_URI", None)
    with webhook_receiver() as (hook, received):
        saved = subprocess.run(
            [sys.executable, "-m", "cifar10_mlops.ops.notify", "--url", hook,
             "--allow-private-url"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert saved.returncode == 0, saved.stderr

        log = tmp_path / "deployment.log"
        served = start([sys.executable, "-m", "flows.deploy"], log, env, project)
        try:
            wait_for(lambda: "is being served" in log.read_text(), "deployment", served, log)
            archive = write_image_archive(tmp_path / "cifar10-v2.tar.gz", fmt="PNG")
            published = subprocess.run(
                [sys.executable, "-m", "cifar10_mlops.cli", "publish-data", str(archive)],
                cwd=project, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert published.returncode == 0, published.stderr
            assert "event cifar10.dataset.published" in published.stdout
            commit = git(project, "rev-parse", "HEAD").strip()

            name = tiny_params()["retrain"]["deployment"]
            deployments = DeploymentFilter(name=DeploymentFilterName(any_=[name]))
            with (
                temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
                get_client(sync_client=True) as client,
            ):
                runs = until_ended(
                    lambda: [r for r in client.read_flow_runs(deployment_filter=deployments)
                             if "rev" in r.parameters],  # not the schedule's
                    served, log,
                )  # fmt: skip
        finally:
            stop(served)

    [run] = runs  # the trigger's, at the published commit
    assert run.state.type.value == "COMPLETED", log.read_text()[-3000:]
    assert run.parameters == {"rev": commit, "force": True}
    # trained on the published archive, not on CIFAR10_SOURCE's
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("cifar10-cnn", "champion")
    assert str(version.version) == "1"
    assert client.get_run(version.run_id).data.params["download.source"] == "cifar10-v2.tar.gz"
    [message] = received
    assert message["subject"] == "new champion: cifar10-cnn v1"
    assert message["body"].startswith("test accuracy ")
