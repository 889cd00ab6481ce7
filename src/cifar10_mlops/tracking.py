"""MLflow plumbing shared by the stages: where the store is, and how a training run is tagged.

The default store is embedded: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/`,
relative to the repository root, also for experiments DVC runs in a temporary copy.
MLFLOW_TRACKING_URI points every stage at a server instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops import health
from cifar10_mlops.errors import PipelineError

SQLITE = "sqlite:///"
DEFAULT_TRACKING_URI = f"{SQLITE}mlruns/mlflow.db"
# The registry's aliases: `register` moves them, `predict` and `make serve-model` load CHAMPION.
CHAMPION, CHALLENGER = "champion", "challenger"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def champion_uri(model_name: str) -> str:
    """The MLflow model URI of `model_name`'s champion version."""
    return f"models:/{model_name}@{CHAMPION}"


def model_version(uri: str, client):
    """The registry's version that a `models:/` URI names now: `models:/NAME@ALIAS`,
    `models:/NAME/VERSION`, `models:/NAME/latest` or a stage, as MLflow's own loader reads
    them; None for any other URI (a run, a folder, a logged model's `models:/m-...`). Raises
    MlflowException when the registry has no such version, PipelineError for a name with no
    versions."""
    if not uri.startswith("models:/"):
        return None
    name, slash, suffix = uri.removeprefix("models:/").partition("/")
    if not slash and "@" in name:
        return client.get_model_version_by_alias(*name.rsplit("@", 1))
    if suffix.isdigit():
        return client.get_model_version(name, suffix)
    if not slash:
        return None
    stages = None if suffix.lower() == "latest" else [suffix]
    found = client.get_latest_versions(name, stages)
    if not found:
        raise PipelineError(f"{uri}: model {name!r} has no such version")
    return max(found, key=lambda v: int(v.version))


def sqlite_file(uri: str) -> Path | None:
    """The database file of an embedded `sqlite:///` store URI (relative or absolute); None
    for any other store."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def connect(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: tracking_uri()) and return the URI as configured.

    A relative sqlite path is resolved against the repository root (see _repo_root), so that
    an experiment DVC runs in a temporary copy still logs to the repository's store. The
    absolute form also keeps MLflow, which caches one store per URI string, from mixing up
    two stores whose relative paths look alike. A server that does not answer is an error.
    """
    import mlflow

    uri = uri or tracking_uri()
    check_reachable(uri)
    database = sqlite_file(uri)
    if database is not None and not database.is_absolute():
        store = (_repo_root() / database).resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"{SQLITE}{store}")
    else:
        mlflow.set_tracking_uri(uri)
    return uri


def _repo_root() -> Path:
    """DVC_ROOT, which DVC sets for every stage it runs (for `dvc exp run --temp` and queued
    experiments: the parent repository, not the temporary copy); else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def configure(experiment: str, uri: str | None = None) -> str:
    """Connect to the store (creating the embedded one) and select `experiment`.

    Returns the experiment id. New experiments in the embedded store keep their artifacts
    in `mlruns/artifacts`; a server uses its own artifact root.
    """
    import mlflow

    connect(uri)
    artifacts = None
    database = sqlite_file(mlflow.get_tracking_uri())
    if database is not None:
        artifacts = (database.parent / "artifacts").as_uri()
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(experiment, artifact_location=artifacts)


def git_commit() -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@contextmanager
def start_run(**kwargs) -> Iterator:
    """mlflow.start_run, except that an interrupted run ends KILLED rather than FAILED."""
    import mlflow

    with mlflow.start_run(**kwargs) as run:
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise


def orchestration_tags() -> dict[str, str]:
    """What ran this stage, beyond the process: the Prefect flow run (flows/retrain.py passes
    its id down through `dvc repro`; a Prefect worker sets it for a deployment's run) and the
    DVC experiment (`dvc exp run` names it)."""
    found = {
        "prefect_flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID", ""),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
    }
    return {k: v.strip() for k, v in found.items() if v.strip()}


def process_tags() -> dict[str, str]:
    """Tags that identify the process logging a run, so a later stage can tell a run whose
    process died (kill -9, power loss) from one still in progress."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def end_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process no longer exists.

    MLflow cannot end a run whose process was killed with SIGKILL; the next stage that logs to
    the experiment does it instead. Runs of other hosts, or without process tags, are left
    alone. Returns the ids of the runs ended.
    """
    import mlflow

    client = mlflow.MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        if _alive(int(tags["pid"])):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        print(
            f"marked {len(ended)} MLflow run(s) KILLED whose process had died: {', '.join(ended)}"
        )
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking store is a server that does not answer.

    MLflow's own client retries a dead server for minutes; a stage calls this before it
    starts work that would be lost. An embedded (sqlite or file) store needs no check.
    """
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        health.require(
            uri,
            "MLflow tracking server",
            "start it, or unset MLFLOW_TRACKING_URI to log to the embedded store",
            timeout,
        )
