"""MLflow plumbing shared by the stages: where the store is, and how a training run is tagged.

The default store is embedded: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/`,
relative to the repository root, also for experiments DVC runs in a temporary copy.
MLFLOW_TRACKING_URI points every stage at a server instead.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops.core import health, ui_view
from cifar10_mlops.core.errors import PipelineError

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
        experiment_id = found.experiment_id
    else:
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifacts)
    ui_view.save(mlflow.MlflowClient(), experiment_id)
    return experiment_id


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


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, attempts: int = 3) -> None:
    """Log `metrics` at `step` in one request that is safe to repeat.

    MLflow's client retries a request the server never answered, but not one whose answer was
    cut off (a server killed mid-reply: "Connection broken: IncompleteRead"), although the
    server may have stored the metrics. The batch carries one timestamp, so a repeat after
    such an error stores nothing twice: the server skips rows it already holds.
    """
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, step) for key, value in metrics.items()]
    client = mlflow.MlflowClient()
    for attempt in range(1, attempts + 1):
        try:
            client.log_batch(run_id, metrics=batch)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts or "Connection broken" not in str(exc):
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
    if not uri.startswith(("http://", "https://")):
        return
    if urllib.parse.urlsplit(uri).password is not None:
        raise PipelineError(
            "MLFLOW_TRACKING_URI carries a password: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD instead (the URI is recorded in run.json and MLflow)"
        )
    health.require(
        uri,
        "MLflow tracking server",
        "start it, or unset MLFLOW_TRACKING_URI to log to the embedded store",
        timeout,
    )
    check_login(uri)


# A server that answered its health check is up; its first logged-in request per worker
# process opens the user store and, on a loaded machine, has taken over 10 s. A dead server
# still fails at once (connection refused).
LOGIN_TIMEOUT = 60.0


def check_login(uri: str, timeout: float = LOGIN_TIMEOUT) -> None:
    """Fail fast, naming the server and the variables, when a server with logins (MLflow's
    basic-auth app) refuses the credentials in MLFLOW_TRACKING_USERNAME/PASSWORD, or was given
    none, instead of a stage failing on its first write after minutes of work."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    headers = {}
    if user and password:
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {login}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with health.open_url(urllib.request.Request(probe, headers=headers), timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return  # answered: whatever else is wrong, the stage's own call will say
    except (urllib.error.URLError, OSError) as exc:
        raise PipelineError(f"MLflow tracking server {uri} is unreachable ({exc})") from None
    if not headers:
        raise PipelineError(
            f"MLflow tracking server {uri} requires a login: set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD"
        )
    who = f"user {user!r}" if user and password else "MLFLOW_TRACKING_TOKEN"
    raise PipelineError(
        f"MLflow tracking server {uri} refused the login of {who}: check "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def tag_registered_version(registry_json: Path, tags: dict[str, str]) -> None:
    """Set `tags` on the model version a register stage's registry.json names."""
    import mlflow

    registry = json.loads(registry_json.read_text())
    connect(registry["tracking_uri"])
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registry["model_name"], registry["version"], key, value)
