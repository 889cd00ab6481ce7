"""The retrain deployment on Prefect work-pool workers: each worker runs it in its own checkout.
Also the pools themselves: their pinned job templates (ensure_pool) and the register stages'
concurrency limit (ensure_register_limit).

A deployment made by `python -m flows.deploy --pool NAME` (`make deploy-pool`) carries one pull
step, `enter_checkout`, instead of a path on the machine that deployed it. On whichever worker
picks a run up, the step returns that worker's checkout, CIFAR10_MLOPS_CHECKOUT (which
`make worker` sets to the checkout it starts in), and Prefect runs `flows/retrain.py:retrain`
there. A machine needs only a checkout, the credentials and the DVC remote: the flow pulls
what the remote has (`dvc pull`) and pushes what it made (`dvc exp push`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect.runner.storage import LocalStorage

from cifar10_mlops.core.errors import PipelineError

CHECKOUT_VAR = "CIFAR10_MLOPS_CHECKOUT"
WORKER_VAR = "CIFAR10_MLOPS_WORKER"  # flows/worker.py sets it to the worker's name
ENTRYPOINT = "flows/retrain.py:retrain"
TRIAL_ENTRYPOINT = "flows/trial.py:tune_trial"  # a work-pool search's trials (flows/search.py)
POOL_TYPES = ("process", "docker")  # docker: ops/containers.py
# Runs in containers or checkouts of their own register one at a time: each compares its model
# with the champion the one before it left (a Prefect global concurrency limit of one slot,
# made by ensure_register_limit; where no server has it, the stage runs unlimited).
REGISTER_LIMIT = "cifar10-register"


def enter_checkout() -> dict[str, str]:
    """A deployment pull step, run by the worker's flow-run process: the directory to run the
    flow in, the worker's CIFAR10_MLOPS_CHECKOUT, once it looks like a checkout of this
    project."""
    raw = os.environ.get(CHECKOUT_VAR, "").strip()
    if not raw:
        raise PipelineError(
            f"{CHECKOUT_VAR} is not set on this worker: start workers with `make worker` in a "
            "checkout of this project (it sets it)"
        )
    checkout = Path(raw).resolve()
    needed = ("dvc.yaml", ENTRYPOINT.partition(":")[0])
    missing = [p for p in needed if not (checkout / p).is_file()]
    if missing:
        raise PipelineError(
            f"{CHECKOUT_VAR}={raw} is not a checkout of this project (no {', '.join(missing)})"
        )
    return {"directory": str(checkout)}


def pull_step() -> dict[str, Any]:
    """The one pull step of this project's deployments on a process pool."""
    return {f"{__name__}.{enter_checkout.__name__}": {}}


class WorkerCheckout(LocalStorage):
    """The flow's code as Prefect's local storage reads it when deploying (from `path`), but
    with `enter_checkout` as the deployment's pull step instead of `path` itself."""

    def to_pull_step(self) -> dict[str, Any]:
        return pull_step()


# What a run's job variables (`prefect deployment run -jv KEY=VALUE`, or a deployment's own)
# may not set on a worker: the command it runs, its environment (the worker's credentials are
# in it) and its folder. The pool's template fixes them and refuses unknown variables.
PINNED = {"command": None, "env": {}, "working_dir": None}


def pinned_template() -> dict:
    """The process pool's default base job template with PINNED fixed: a worker runs Prefect's
    own flow-run command with its own environment, in the checkout the pull step names."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for key, value in PINNED.items():
        template["job_configuration"][key] = value
        template["variables"]["properties"].pop(key)
    template["variables"]["additionalProperties"] = False
    return template


def pool_template(pool_type: str) -> dict:
    if pool_type == "docker":
        from cifar10_mlops.ops.containers import pinned_template as docker_template

        return docker_template()
    return pinned_template()


def ensure_pool(name: str, pool_type: str = "process") -> None:
    """Create the work pool `name` of `pool_type` with its pinned template (pinned_template(),
    or containers.pinned_template()) unless the server has it, and pin the template of one
    that has another; refuse a pool of another type (its workers would run the flow
    elsewhere than the deployment expects)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = pool_template(pool_type)
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
            )
            print(f"created {pool_type} work pool {name!r}")
            return
        if pool.type != pool_type:
            raise PipelineError(
                f"work pool {name!r} is of type {pool.type!r}, not {pool_type!r}: give another "
                f"pool name, or --type {pool.type}"
            )
        if pool.base_job_template != template:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            if pool_type == "docker":
                from cifar10_mlops.ops.containers import ALLOWED

                pins = f"all but {', '.join(ALLOWED)}"
            else:
                pins = ", ".join(PINNED)
            print(f"work pool {name!r}: its job template now pins {pins}")


def ensure_register_limit() -> None:
    """The global concurrency limit REGISTER_LIMIT, one slot, unless the server has it: the
    `register` stages of runs in different containers or checkouts take turns."""
    from prefect import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate,
    )  # fmt: skip
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(REGISTER_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=REGISTER_LIMIT, limit=1)
            )
            return
        if (found.limit, found.active) != (1, True):  # someone changed it: one slot again
            client.update_global_concurrency_limit(
                REGISTER_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True)
            )
