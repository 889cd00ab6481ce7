"""Start a Prefect worker that runs the retrain deployment in this checkout.

`make worker POOL=cpu` on each machine that should retrain: a checkout of this project, the
credentials in the environment and a DVC remote are all it needs. It checks first, naming
what is missing, that the Prefect server (PREFECT_API_URL, PREFECT_API_AUTH_STRING) and the
team's MLflow server (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD) answer and take
the credentials, that a DVC remote is set (DVC_REMOTE, or this checkout's default) and that the
checkout has no uncommitted changes; then it runs what `prefect worker start` runs on the
process pool (created if missing, its job template pinned), taking one flow run at a time,
with CIFAR10_MLOPS_CHECKOUT set to this checkout for the deployment's pull step
(cifar10_mlops.ops.pool), and refusing runs whose job variables set the command, environment
or folder (PinnedProcessWorker).

With `--type docker` it is instead a worker of a docker pool (compose's `docker-worker`): the
same server checks, then each flow run starts in a fresh container of the project's image,
with only the credentials the worker passes and no work tree but its own, up to --limit at a
time (PinnedDockerWorker, cifar10_mlops.ops.containers).

  python -m flows.worker --pool cpu [--name NAME] [--healthcheck]
  python -m flows.worker --pool docker --type docker [--limit N]   # DOCKER_HOST: Docker's API
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import warnings
from functools import partial
from pathlib import Path

from prefect.workers.process import ProcessWorker
from prefect_docker.worker import DockerWorker

from cifar10_mlops.core.validation import checked, valid_name
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops import containers
from cifar10_mlops.ops.containers import ALLOWED, FlowRunContainer
from flows.deploy import CONTAINER_RUNS
from cifar10_mlops.ops.pool import (
    CHECKOUT_VAR, ENTRYPOINT, PINNED, POOL_TYPES, TRIAL_ENTRYPOINT, WORKER_VAR, enter_checkout,
    ensure_pool, pull_step,
)  # fmt: skip
from cifar10_mlops.core.repo import dvc_remote_set
from cifar10_mlops.core.repo import check_workspace
from cifar10_mlops.ops.prefect_server import require_team_servers


async def checked_run(worker, flow_run, refused, entrypoints, pull_steps) -> None:
    """Refuse a run before anything starts unless it is one of this project's deployments as
    flows.deploy made it: its job variables (the run's and its deployment's) set nothing
    `refused(name)` names, its entrypoint is one of `entrypoints` and its pull steps are
    `pull_steps`. A Prefect API user can edit a deployment's pull steps (any code, run by the
    flow-run process with the worker's credentials) as well as its job variables."""
    asked = dict(flow_run.job_variables or {})
    deployment = None
    if flow_run.deployment_id:
        deployment = await worker.client.read_deployment(flow_run.deployment_id)
        asked = {**(deployment.job_variables or {}), **asked}
    names = sorted(k for k in asked if refused(k.split(".")[0]))
    if names:
        raise PipelineError(
            f"job variables {', '.join(names)} are refused by this worker: {worker.pinned_why}"
        )
    if deployment is None:
        raise PipelineError(
            f"flow run {flow_run.id} has no deployment: this worker runs only this project's "
            "deployments (python -m flows.deploy, flows.search)"
        )
    if deployment.entrypoint not in entrypoints or (deployment.pull_steps or []) != pull_steps:
        raise PipelineError(
            f"deployment {deployment.name!r} runs {deployment.entrypoint!r} with pull steps "
            f"{deployment.pull_steps!r}: this worker runs only {', '.join(entrypoints)} as "
            "flows.deploy deploys them (deploy again to restore it)"
        )


# Prefect registers worker classes by type; these take `process` and `docker` over in this
# process (the warning that says so is expected).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*matches existing registered type")

    class PinnedProcessWorker(ProcessWorker):
        """Prefect's process worker, which refuses a run whose job variables (the run's or its
        deployment's) set what the pool's template pins (ops/pool.py PINNED): the command, the
        environment, the folder. The template already makes the server refuse them; the worker,
        which holds the credentials, does not rely on a template that any API user can edit."""

        pinned_why = (
            "it runs Prefect's own flow-run command, with its own environment, in its checkout"
        )

        async def run(self, flow_run, configuration, task_status=None):
            await checked_run(
                self, flow_run, PINNED.__contains__, (ENTRYPOINT, TRIAL_ENTRYPOINT), [pull_step()]
            )
            return await super().run(flow_run, configuration, task_status)

    class PinnedDockerWorker(DockerWorker):
        """prefect-docker's worker, which starts each run in a fresh container of `container`
        (ops/containers.py: its image, networks, /datasets and the environment it passes), and
        refuses a run whose job variables set anything but containers.ALLOWED."""

        container: FlowRunContainer | None = None

        pinned_why = (
            f"a run may set only {', '.join(ALLOWED)}; its image, command, environment, volumes "
            "and networks are the worker's"
        )

        async def run(self, flow_run, configuration, task_status=None):
            await checked_run(self, flow_run, lambda name: name not in ALLOWED, (ENTRYPOINT,), [])
            self.container.apply(configuration)
            return await super().run(flow_run, configuration, task_status)


def check_worker(pool: str, name: str, pool_type: str = "process") -> FlowRunContainer | None:
    """What a worker needs, checked before it takes a run; a docker worker's container."""
    checked("--pool", valid_name, pool)
    checked("--name", valid_name, name)
    if pool_type == "process":
        enter_checkout()  # this folder is a checkout (CIFAR10_MLOPS_CHECKOUT set by the caller)
    require_team_servers(
        "a worker takes its runs from the team's Prefect server",
        "a worker's runs and models must land where the team sees them (set it, with "
        "MLFLOW_TRACKING_USERNAME and _PASSWORD)",
    )
    if not dvc_remote_set():
        raise PipelineError(
            "no DVC remote: set DVC_REMOTE (e.g. s3, with the AWS_* variables) or this "
            "checkout's default (`dvc remote default --local NAME`); a worker pulls its inputs "
            "from it and pushes what it made"
        )
    if pool_type == "docker":
        return containers.flow_run_container(containers.docker_client())
    if not check_workspace():
        raise PipelineError(
            "not a git checkout with a commit: a worker records each run as a DVC experiment"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="cpu", help="the work pool (default cpu)")
    parser.add_argument(
        "--type", dest="pool_type", choices=POOL_TYPES, default="process",
        help="process: runs in this checkout (default); docker: each run in a fresh container",
    )  # fmt: skip
    parser.add_argument("--name", help="the worker's name (default: host-checkout folder)")
    parser.add_argument(
        "--limit", type=int,
        help="flow runs at a time (a process worker runs one, in its checkout; a docker "
        "worker as many as the docker deployment's concurrency limit, 2)",
    )  # fmt: skip
    parser.add_argument(
        "--healthcheck", action="store_true",
        help="serve /health on PREFECT_WORKER_WEBSERVER_PORT (8080), for a container's check",
    )  # fmt: skip
    args = parser.parse_args(argv)
    checkout = Path.cwd().resolve()
    name = args.name or f"{socket.gethostname()}-{checkout.name}"
    os.environ[CHECKOUT_VAR] = str(checkout)
    os.environ[WORKER_VAR] = name  # the trial flow tags its MLflow run with it
    if args.limit is None:
        args.limit = CONTAINER_RUNS.limit if args.pool_type == "docker" else 1
    try:
        if not 1 <= args.limit <= 64:
            raise PipelineError(f"--limit {args.limit}: give 1 to 64 flow runs at a time")
        if args.pool_type == "process" and args.limit != 1:
            raise PipelineError(
                "--limit: a process worker runs one flow run at a time, in its one checkout"
            )
        container = check_worker(args.pool, name, args.pool_type)
        ensure_pool(args.pool, args.pool_type)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    where = f"in containers ({container.describe()})" if container else f"in {checkout}"
    print(f"worker {name!r} on pool {args.pool!r}, running flows {where}", flush=True)
    run_worker(args.pool, name, args.healthcheck, container=container, limit=args.limit)


def run_worker(
    pool: str, name: str, healthcheck: bool, container: FlowRunContainer | None = None,
    limit: int = 1,
) -> None:  # fmt: skip
    """What `prefect worker start --type process --limit 1` runs, with PinnedProcessWorker
    (or `--type docker` with PinnedDockerWorker, given a container), until interrupted
    (SIGTERM and Ctrl-C stop it as they stop Prefect's)."""
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker

    kind = PinnedProcessWorker if container is None else PinnedDockerWorker
    setup_signal_handlers_worker(os.getpid(), f"the {kind.type} worker", print)
    worker = kind(
        name=name, work_pool_name=pool, limit=limit,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )  # fmt: skip
    if container is not None:
        worker.container = container
    try:
        asyncio.run(worker.start(with_healthcheck=healthcheck, printer=partial(print, flush=True)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"worker {name!r} stopped", flush=True)


if __name__ == "__main__":
    main()
