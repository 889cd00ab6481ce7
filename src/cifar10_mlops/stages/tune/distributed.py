"""Keras Tuner's distributed mode: the chief's announcement and the workers.

The `tune` stage run with KERASTUNER_TUNER_ID=chief, KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT serves the oracle and trains nothing; it writes search.json into the
shared --state folder (the search id, the chief's params, its MLflow run, the data digest).
Workers (`python -m cifar10_mlops.stages.tune --worker`) read it, run trials and log each as a
nested run of the chief's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cifar10_mlops.core import tracking
from cifar10_mlops.core.settings import Params, params_from_dict
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import write_json
from cifar10_mlops.core.splits import load_manifest
from cifar10_mlops.stages.tune.oracle import kt_chief, kt_distributed, make_tuner
from cifar10_mlops.stages.tune.runs import SearchLog
from cifar10_mlops.stages.tune.trials import prepare_search, run_trials

SEARCH_FILE = "search.json"  # what a chief tells its workers, in the search's state folder


def announce(
    params: Params, data: Path, state_root: Path, sid: str, run_id: str, experiment_id: str,
    manifest: dict,
) -> None:  # fmt: skip
    """Write search.json for the workers and say how to start them."""
    info = {
        "search_id": sid,
        "mlflow_run_id": run_id,
        "experiment_id": experiment_id,
        "data_sha256": manifest["source_sha256"],
        "params": params.model_dump(),
    }
    write_json(state_root / sid / SEARCH_FILE, info)
    print(
        f"[tune] chief: serving the oracle on {oracle_address()}; start workers with a unique "
        "KERASTUNER_TUNER_ID each, KERASTUNER_ORACLE_IP/PORT reaching this address and the "
        f"same MLflow server: python -m cifar10_mlops.stages.tune --worker --data {data} "
        f"--state {state_root}",
        flush=True,
    )


def oracle_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def end_lost_trials(parent_id: str) -> None:
    """Mark KILLED the trial runs still RUNNING once the search is over: their worker died,
    and another worker ran the trial again under a new run."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    for child in client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
    ):
        client.set_tag(child.info.run_id, "error", "worker lost: the trial ran again elsewhere")
        client.set_terminated(child.info.run_id, "KILLED")
        print(f"[tune] trial run {child.info.run_id} ended KILLED: its worker was lost")


def wait_for_search(state: Path, served: set[str], timeout: float | None) -> dict:
    """The newest search.json under `state` whose MLflow run this worker has not served."""
    deadline = None if timeout is None else time.monotonic() + timeout
    said = False
    while True:
        found = []
        for path in state.glob(f"*/{SEARCH_FILE}") if state.exists() else ():
            try:
                found.append((path.stat().st_mtime, json.loads(path.read_text()), path))
            except (OSError, ValueError):
                continue  # removed or replaced while reading
        fresh = [f for f in found if f[1]["mlflow_run_id"] not in served]
        if fresh:
            _, info, path = max(fresh, key=lambda f: f[0])
            return {**info, "file": path}
        if deadline is not None and time.monotonic() > deadline:
            raise PipelineError(
                f"no search to join in {state} after {timeout:g}s: start the tune stage with "
                "KERASTUNER_TUNER_ID=chief, sharing this --state folder"
            )
        if not said:
            print(f"[tune] worker: waiting for a chief's {SEARCH_FILE} under {state}", flush=True)
            said = True
        time.sleep(2)


def check_worker_env() -> str:
    """This process's KERASTUNER_TUNER_ID, once the environment makes it a worker."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    if not kt_distributed() or not os.environ.get("KERASTUNER_ORACLE_PORT") or not tuner_id:
        raise PipelineError(
            "a worker needs KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's "
            "oracle) and KERASTUNER_TUNER_ID (unique per worker)"
        )
    if kt_chief():
        raise PipelineError(
            f"KERASTUNER_TUNER_ID={tuner_id} names the chief; give each worker another id"
        )
    return tuner_id


def run_worker(*, data: Path, state_root: Path, loop: bool, wait: float | None) -> None:
    """Run trials for the chief's searches found under `state_root`: one search, or one after
    another with `loop`; `wait`: seconds to wait for a search (None: no limit)."""
    tuner_id = check_worker_env()
    served: set[str] = set()
    manifest = load_manifest(data)
    while True:
        info = wait_for_search(state_root, served, wait)
        served.add(info["mlflow_run_id"])
        if info["data_sha256"] != manifest["source_sha256"]:
            raise PipelineError(
                f"{data} is not the chief's dataset (sha256 {manifest['source_sha256'][:12]}"
                f"... vs {info['data_sha256'][:12]}...): run `dvc repro prepare` first"
            )
        ran = join_search(info, data, state_root, tuner_id)
        print(
            f"[tune] worker {tuner_id}: search {info['search_id']} is over; ran {ran} trials",
            flush=True,
        )
        if not loop:
            return


def join_search(info: dict, data: Path, state_root: Path, tuner_id: str) -> int:
    """Run trials of the search `info` (a search.json) until it ends; returns how many."""
    import mlflow

    params = params_from_dict(info["params"])
    search = prepare_search(params, data)
    uri = tracking.tracking_uri()
    tracking.connect(uri)
    try:
        mlflow.MlflowClient().get_run(info["mlflow_run_id"])
    except mlflow.exceptions.MlflowException:
        raise PipelineError(
            f"the chief's MLflow run {info['mlflow_run_id']} is not in {uri}: point "
            "MLFLOW_TRACKING_URI at the chief's tracking server"
        ) from None
    log = SearchLog(
        state=state_root / info["search_id"], experiment_id=info["experiment_id"],
        parent_id=info["mlflow_run_id"], cfg=params, search_file=info["file"],
    )  # fmt: skip
    tuner = make_tuner(
        params.tune, params.train, seed=search.seed, first=None, log=log,
        directory=state_root, project=info["search_id"], images=search.images,
        strategy=search.strategy,
    )  # fmt: skip
    print(
        f"[tune] worker {tuner_id}: joined search {info['search_id']} (MLflow run "
        f"{info['mlflow_run_id']}) at {oracle_address()}",
        flush=True,
    )
    run_trials(tuner, log, search.kwargs)
    return log.ran
