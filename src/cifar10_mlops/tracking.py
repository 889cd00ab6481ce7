"""MLflow plumbing shared by the stages: where the store is, and how a training run is tagged.

The default store is embedded: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/`,
relative to the directory DVC runs the stages in (the repository root). MLFLOW_TRACKING_URI
points every stage at a server instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def connect(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: tracking_uri()) and return the URI as configured.

    A relative sqlite path is resolved against the working directory first: MLflow caches
    one store per URI string, so two relative paths that look alike must not share one.
    """
    import mlflow

    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        store = Path(uri.removeprefix("sqlite:///")).resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{store}")
    else:
        mlflow.set_tracking_uri(uri)
    return uri


def configure(experiment: str, uri: str | None = None) -> str:
    """Connect to the store (creating the embedded one) and select `experiment`.

    Returns the experiment id. New experiments in the embedded store keep their artifacts
    in `mlruns/artifacts`; a server uses its own artifact root.
    """
    import mlflow

    connect(uri)
    artifacts = None
    store = mlflow.get_tracking_uri()
    if store.startswith("sqlite:///"):
        artifacts = (Path(store.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
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
