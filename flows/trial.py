"""The `tune-trial` flow: one Hyperband trial of a work-pool search (flows/search.py).

Deployed as `tune-trial/trials` on the search's work pool; whichever worker (`make worker`)
takes a run trains the trial in its own checkout (cifar10_mlops.ops.pool's pull step), on
its `data/prepared`, pulled from the DVC remote when missing or another dataset than the
search's. What it trains and where it logs are in its one parameter, the trial spec
(cifar10_mlops.stages.tune.pool_trial); it reports back only through its MLflow run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import flow

from cifar10_mlops.core import tracking
from cifar10_mlops.core.repo import dvc_checked, remote_args
from cifar10_mlops.ops.pool import WORKER_VAR
from cifar10_mlops.stages.tune.pool_trial import (
    check_records, check_spec, ensure_data, run_trial,
)  # fmt: skip

DATA = Path("data/prepared")


@flow(name="tune-trial", log_prints=True)
def tune_trial(spec: dict) -> dict:
    """Train one trial of a search; returns its MLflow run id, best score and seconds."""
    import mlflow

    check_spec(spec)
    tracking.connect()
    client = mlflow.MlflowClient()
    check_records(spec, client)  # before anything is pulled, trained or logged
    ensure_data(
        DATA, spec["data_sha256"], pull=lambda: dvc_checked("pull", *remote_args(), "prepare")
    )
    worker = os.environ.get(WORKER_VAR) or socket.gethostname()
    for key, value in {"worker": worker, **tracking.process_tags()}.items():
        client.set_tag(spec["run_id"], key, value)
    return run_trial(spec, DATA)
