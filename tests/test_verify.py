"""`cifar10-mlops verify MODEL_URI`: a registered version's weights rebuilt from its recorded
pipeline state, bit for bit, on a copy of the reproduced tiny pipeline."""

import subprocess

import mlflow
import pytest

from helpers import git
from servers import BIN, env_with_bin

pytestmark = pytest.mark.integration

MODEL = "cifar10-cnn"


def verify(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifar10-mlops"), "verify", *args], cwd=project, capture_output=True,
        text=True, env=env_with_bin(), timeout=600,
    )  # fmt: skip


def tags(project) -> dict[str, str]:
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.MlflowClient().get_model_version(MODEL, "1").tags


@pytest.mark.extended  # a retraining: 2 min
@pytest.mark.long(seconds=40)
def test_verify_rebuilds_a_versions_weights_bit_for_bit(reproduced):
    registered = tags(reproduced)
    runs_before = len(mlflow.search_runs(search_all_experiments=True))

    result = verify(reproduced, f"models:/{MODEL}/1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"models:/{MODEL}/1 -> {MODEL} v1: rebuilt weights match, sha256 "
        f"{registered['weights_sha256'][:16]} (model.keras md5 as registered)"
    )
    # the rebuild's training run went to a throwaway store, its worktree is gone
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before
    assert len(git(reproduced, "worktree", "list").splitlines()) == 1
    assert (
        "Data and pipelines are up to date"
        in subprocess.run(
            [str(BIN / "dvc"), "status"], cwd=reproduced, capture_output=True, text=True
        ).stdout
    )


@pytest.mark.extended  # a retraining: 2 min
@pytest.mark.long(seconds=30)
def test_verify_says_when_the_weights_differ(reproduced):
    tags(reproduced)
    mlflow.MlflowClient().set_model_version_tag(MODEL, "1", "weights_sha256", "0" * 64)

    result = verify(reproduced, f"models:/{MODEL}/1")

    assert result.returncode == 1
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"models:/{MODEL}/1 -> {MODEL} v1: rebuilt weights DIFFER, sha256 ")
    assert last.endswith("vs registered 0000000000000000")


def test_verify_refuses_a_version_without_a_weights_digest(reproduced):
    tags(reproduced)
    mlflow.MlflowClient().delete_model_version_tag(MODEL, "1", "weights_sha256")
    result = verify(reproduced, f"models:/{MODEL}/1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {MODEL} v1 has no weights_sha256 tag: it was registered before versions "
        "recorded their weights' digest, so there is nothing to compare with"
    )
