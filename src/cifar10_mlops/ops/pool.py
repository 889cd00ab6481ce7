"""The retrain deployment on Prefect work-pool workers: each worker runs it in its own checkout.

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
