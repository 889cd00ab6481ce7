"""Artifacts checked against a record that their writers cannot change.

MLflow keeps a run's artifacts (the model, with the Python that MLflow runs when it loads it;
the pipeline state that `checkout` restores) in an artifact store, and its params in the
tracking database. Whoever can write the store (the S3 key DVC also uses) could replace the
artifacts, but not a param: MLflow refuses to change a logged param's value. So `evaluate` and
`register` record each artifact folder's SHA-256 as a param of its run, and everything that
loads or restores one (predict, serve, the gate's re-scoring, checkout, verify) downloads it
into a local folder, checks it against the record and only then reads that same folder.

The digest covers every file's relative path and bytes (tree_sha256), so a file added,
removed, renamed or changed is caught.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import file_digest

# Params of the logged model (each `evaluate` logs a new one):
MODEL_PARAM = "artifacts_sha256"  # its folder: MLmodel, the pyfunc's code, the .keras file
PREDICTIONS_PARAM = "test_predictions_sha256"  # the test_predictions.npz logged beside it
REFERENCE_PARAM = "drift_reference_sha256"  # the drift_reference.npz logged beside it
# A param of the run per pipeline state registered, named after its folder
# (pipeline/<name>/v<version>/<digest[:12]>)
STATE_PARAM = "pipeline_state_sha256"
# What MLflow itself writes into a model's folder when a models:/ URI is loaded or downloaded
# (the name and version asked for), in a local store into the stored folder itself: not part
# of the model, left out of its digest and deleted from the copy that loads.
MLFLOW_NOTE = "registered_model_meta"


def state_key(folder: str) -> str:
    """The run's param that records the digest of the pipeline state logged in `folder`."""
    return f"{STATE_PARAM}/{folder.split('/', 1)[1]}"


def tree_sha256(folder: Path) -> str:
    """SHA-256 over the sorted relative paths, sizes and contents of every file under
    `folder`; a link or anything but a regular file is refused."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in [*dirs, *files]:
            path = Path(root, name)
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise PipelineError(f"{path}: not a regular file, in an artifact folder")
        for name in files:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            entries.append(f"{relative}\0{path.stat().st_size}\0{file_digest(path, 'sha256')}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def digest(path: Path) -> str:
    """tree_sha256 of a folder, the SHA-256 of a file."""
    return tree_sha256(path) if path.is_dir() else file_digest(path, "sha256")


def download(uri: str, dest: Path, label: str) -> Path:
    """The artifacts at `uri` downloaded into `dest`: their local folder (or file), without
    MLFLOW_NOTE."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as exc:  # MlflowException, OSError, botocore's errors: they are gone
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{label}: cannot download {uri} ({reason})") from None
    if local.is_dir():
        (local / MLFLOW_NOTE).unlink(missing_ok=True)
    return local


def verified(uri: str, want: str | None, dest: Path, label: str, what: str = "") -> Path:
    """Download the artifacts at `uri` into `dest` and return their local path, provided their
    digest() is `want`, the recorded one; else a PipelineError naming both, and `what` they
    are (default: the URI). No record is refused too: nothing could tell the artifacts were
    not changed."""
    what = what or uri
    if not want:
        raise PipelineError(
            f"{label}: no digest of {what} was recorded when it was logged, so it cannot be "
            "checked before it is used; log and register it again (dvc repro -f evaluate)"
        )
    local = download(uri, dest, label)
    got = digest(local)
    if got != want:
        raise PipelineError(
            f"{label}: {what} has sha256 {got[:16]}..., {want[:16]}... was recorded when it "
            "was logged: it was changed since; refusing to use it"
        )
    return local


def logged_model_params(client, model_id: str) -> dict[str, str]:
    """The params of the logged model `model_id` (MLflow stores them in the tracking
    database; they are not artifacts)."""
    return dict(client.get_logged_model(model_id).params)


def model_location(client, model_id: str) -> str:
    """Where the logged model's artifacts are stored: downloaded from there, they are the
    files as logged (a models:/ download adds a file of its own, registered_model_meta)."""
    return client.get_logged_model(model_id).artifact_location


def load_model(client, model_id: str, label: str):
    """The pyfunc of the logged model `model_id`, loaded from a local copy of its artifacts
    whose digest is the one `evaluate` recorded: the code MLflow runs on load is the code
    that was logged."""
    import tempfile

    import mlflow

    model = client.get_logged_model(model_id)
    want = model.params.get(MODEL_PARAM)
    with tempfile.TemporaryDirectory(prefix="cifar10-model-") as tmp:
        where, what = model.artifact_location, f"models:/{model_id}"
        local = verified(where, want, Path(tmp) / "model", label, what)
        return mlflow.pyfunc.load_model(str(local))


def model_id_of(version) -> str | None:
    """The logged model a registered version was made from (MLflow 3 records it), or None."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(version.source or "")
    return (
        source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None
    )
