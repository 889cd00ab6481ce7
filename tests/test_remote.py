"""Sharing through the DVC remote, as two teammates do: clone A reproduces and pushes, a fresh
clone B pulls. Against a real S3-compatible server (moto's) on 127.0.0.1, through the `s3`
remote that .dvc/config names; the endpoint and keys come from AWS_* as a team sets them.
"""

import json
import subprocess

import pytest
import yaml

from helpers import git, ran, run_dvc
from servers import BIN, s3_keys, s3_server

pytestmark = pytest.mark.integration

BUCKET = "cifar10-mlops"  # .dvc/config: s3://cifar10-mlops/dvc


def dvc_fails(project, *args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=project, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode != 0, result.stdout
    return result


def outputs(lock_path) -> dict[str, str]:
    """dvc.lock's outputs: path -> md5."""
    lock = yaml.safe_load(lock_path.read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


@pytest.fixture
def team(reproduced, tmp_path):
    """Clone A (the reproduced pipeline) with a bare git origin; yields (A, origin)."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(reproduced), str(origin))
    git(reproduced, "remote", "add", "origin", str(origin))
    git(reproduced, "fetch", "-q", "origin")
    return reproduced, origin


@pytest.mark.extended  # a clone pulled: 1 min
def test_a_fresh_clone_pulls_what_another_pushed_and_reproduces_nothing(team, tmp_path):
    a, origin = team
    with s3_server(tmp_path, buckets=(BUCKET,)) as env:
        pushed = run_dvc(a, "push", "--remote", "s3", "--run-cache", env=env)
        assert "pushed" in pushed.stdout
        keys = s3_keys(env, BUCKET)
        assert any(k.startswith("dvc/files/md5/") for k in keys)
        assert any(k.startswith("dvc/runs/") for k in keys), "the run-cache was not pushed"

        b = tmp_path / "clone-b"
        git(tmp_path, "clone", "-q", str(origin), str(b))
        # Committed metrics compare against main before anything is pulled.
        diff = json.loads(run_dvc(b, "metrics", "diff", "HEAD", "--all", "--json", env=env).stdout)
        accuracy = diff["reports/metrics.json"]["accuracy"]
        assert (
            accuracy["old"]
            == accuracy["new"]
            == json.loads((a / "reports/metrics.json").read_text())["accuracy"]
        )
        assert not (b / "models" / "model.keras").exists()

        run_dvc(b, "pull", "--remote", "s3", "--run-cache", env=env)
        assert (b / "models" / "model.keras").read_bytes() == (
            a / "models/model.keras"
        ).read_bytes()
        assert "Data and pipelines are up to date" in run_dvc(b, "status", env=env).stdout
        assert ran(run_dvc(b, "repro", env=env)) == []
        assert outputs(b / "dvc.lock") == outputs(a / "dvc.lock")


@pytest.mark.extended  # a dvc exp run between clones: 1.5 min
def test_an_experiment_is_shared_through_git_and_the_remote(team, tmp_path):
    a, origin = team
    with s3_server(tmp_path, buckets=(BUCKET,)) as env:
        # A register-only experiment: no training, so the test stays short.
        exp = run_dvc(a, "exp", "run", "-n", "stricter", "-S", "register.min_delta=0.5", env=env)
        assert ran(exp) == ["register"]
        git(a, "checkout", "-q", "--", ".")
        run_dvc(a, "exp", "push", "--remote", "s3", "origin", "stricter", env=env)

        b = tmp_path / "clone-b"
        git(tmp_path, "clone", "-q", str(origin), str(b))
        run_dvc(b, "exp", "pull", "--remote", "s3", "origin", "stricter", env=env)
        shown = json.loads(run_dvc(b, "exp", "show", "--json", env=env).stdout)
        [experiment] = [e for rev in shown for e in (rev.get("experiments") or [])]
        [rev] = experiment["revs"]
        assert rev["name"] == "stricter"
        assert rev["data"]["params"]["params.yaml"]["data"]["register"]["min_delta"] == 0.5
        run_dvc(b, "exp", "apply", "stricter", env=env)
        run_dvc(b, "pull", "--remote", "s3", env=env)
        assert "Data and pipelines are up to date" in run_dvc(b, "status", env=env).stdout


def test_an_unreachable_remote_fails_with_dvcs_message_and_loses_nothing(reproduced, tmp_path):
    a = reproduced
    before = outputs(a / "dvc.lock")
    with s3_server(tmp_path, buckets=(BUCKET,)) as env:
        pass  # started and stopped: its port now refuses connections
    result = dvc_fails(a, "push", "--remote", "s3", "--run-cache", env=env)
    assert "ERROR" in result.stderr and "Could not connect" in result.stderr
    assert "Data and pipelines are up to date" in run_dvc(a, "status", env=env).stdout
    assert outputs(a / "dvc.lock") == before
    run_dvc(a, "checkout", env=env)  # every output is still in the local cache


def test_a_remote_that_refuses_the_keys_fails_and_a_pull_changes_nothing(team, tmp_path):
    a, origin = team
    b = tmp_path / "clone-b"
    git(tmp_path, "clone", "-q", str(origin), str(b))
    tracked = git(b, "status", "--porcelain")
    with s3_server(tmp_path, check_keys=True) as env:
        result = dvc_fails(b, "pull", "--remote", "s3", env=env)
        assert "ERROR" in result.stderr
        assert "InvalidAccessKeyId" in result.stderr or "403" in result.stderr, result.stderr
        result = dvc_fails(a, "push", "--remote", "s3", env=env)
        assert "ERROR" in result.stderr
    assert not (b / "models").exists() and not (b / "data" / "raw").exists()
    assert git(b, "status", "--porcelain") == tracked
