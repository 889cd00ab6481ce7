"""`make smoke` on the real dataset: needs CIFAR10_SOURCE (or the official URL) and minutes."""

import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


def test_smoke_runs_the_pipeline_in_a_scratch_copy_and_leaves_the_repository_alone(tmp_path):
    if not os.environ.get("CIFAR10_SOURCE"):
        pytest.skip("set CIFAR10_SOURCE to a CIFAR-10 archive (offline copy or mirror)")
    before = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar10_mlops.ops.smoke",
            "--repo",
            str(REPO),
            "--scratch",
            str(tmp_path / "smoke"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "smoke run passed" in result.stdout
        and f"{tmp_path}/smoke/mlruns/mlflow.db" in result.stdout
    )
    assert (tmp_path / "smoke" / "reports" / "metrics.json").is_file()
    assert "registry:   cifar10-cnn v1 (champion, challenger): first champion" in result.stdout
    after = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert after == before
