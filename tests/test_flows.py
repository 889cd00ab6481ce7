"""The Prefect flow `retrain` (flows/retrain.py) on a scratch copy of the project."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from helpers import error_line, git, run_dvc
from servers import webhook_receiver
from flows import retrain as flow_module

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def dvc_status(project: Path) -> str:
    return run_dvc(project, "status").stdout


def task_names(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        return [r.name for r in sorted(runs, key=lambda r: r.expected_start_time)]


def report_markdown() -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # the latest version of the keyed artifact
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-report"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        return artifact.data


@pytest.mark.extended  # the tiny pipeline as a flow run: 5 min
def test_flow_runs_each_stage_as_a_task_records_an_experiment_and_leaves_dvc_clean(
    harness, reproduced_flow_project, monkeypatch
):
    flow_project = reproduced_flow_project
    # nothing changed since `dvc repro`: every stage is a task, DVC skips each, nothing new
    # is registered, and the report still shows the champion
    state = flow_module.retrain(return_state=True)
    assert state.is_completed(), state.message
    ran = state.result()
    assert list(ran) == ["download", "prepare", "tune", "train", "evaluate", "register"]
    assert not any(ran.values())
    assert task_names(state.state_details.flow_run_id) == ["pull", *ran, "record", "report"]
    assert "Data and pipelines are up to date" in dvc_status(flow_project)

    registry = json.loads(Path("reports/registry.json").read_text())
    assert registry["version"] == 1 and registry["promoted"] is True
    markdown = report_markdown()
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert f"| {metrics['accuracy']:.4f} |" in markdown
    assert "cifar10-cnn v1** , aliases champion, challenger".replace(" ,", ",") in markdown
    run_id = json.loads(Path("models/run.json").read_text())["run_id"]
    assert f"/runs/{run_id})" in markdown and "`dvc status`: up to date" in markdown

    # a forced retrain with more epochs: train, evaluate and register rerun (not the search),
    # DVC agrees with what ran, and the run is recorded as a DVC experiment (pushed to the git
    # remote, its outputs to the DVC remote) while the workspace goes back to the last commit
    origin = flow_project.parent / "origin.git"
    git(flow_project.parent, "clone", "-q", "--bare", str(flow_project), str(origin))
    git(flow_project, "remote", "add", "origin", str(origin))
    storage = flow_project.parent / "dvc-remote"  # what `make remote-local` sets
    run_dvc(flow_project, "remote", "add", "--local", "--default", "local", str(storage))
    monkeypatch.setenv("MLFLOW_PORT", "5123")  # where `make services` put the MLflow UI
    state = flow_module.retrain(force=True, epochs=2, return_state=True)
    forced = state.result()
    assert [s for s, r in forced.items() if r] == ["train", "evaluate", "register"]
    assert task_names(state.state_details.flow_run_id)[-2:] == ["record", "report"]
    assert git(flow_project, "status", "--porcelain", "--untracked-files=no") == ""
    assert yaml.safe_load(Path("params.yaml").read_text())["train"]["epochs"] == 1
    assert "Data and pipelines are up to date" in dvc_status(flow_project)

    [experiment] = experiments(flow_project)
    name, rev = experiment["name"], experiment["rev"]
    assert name.startswith("retrain-") and experiment["params"]["train"]["epochs"] == 2
    second = json.loads(git(flow_project, "show", f"{rev}:reports/registry.json"))
    assert second["version"] == 2 and "challenger" in second["aliases"]
    assert "refs/exps/" in git(flow_project, "ls-remote", "origin")
    model = yaml.safe_load(git(flow_project, "show", f"{rev}:dvc.lock"))["stages"]["train"]["outs"][
        0
    ]
    assert (storage / "files/md5" / model["md5"][:2] / model["md5"][2:]).is_file()

    mlflow.set_tracking_uri(f"sqlite:///{flow_project}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model("cifar10-cnn").aliases
    assert str(aliases["champion"]) == str(second["champion"])
    version = client.get_model_version("cifar10-cnn", "2")
    assert version.tags["dvc_experiment"] == name and version.tags["dvc_experiment_rev"] == rev
    assert version.tags["dvc_experiment_remote"] == "origin"
    run = client.get_run(version.run_id)
    assert run.data.tags["prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    markdown = report_markdown()
    assert "v2" in markdown and f"`{name}`" in markdown and "pushed to `origin`" in markdown
    assert f"http://127.0.0.1:5123/#/experiments/{run.info.experiment_id}/runs/" in markdown


def experiments(project: Path) -> list[dict]:
    """`dvc exp show`'s experiments: name, rev and params.yaml's values."""
    shown = json.loads(run_dvc(project, "exp", "show", "--json").stdout)
    return [
        {"name": r["name"], "rev": r["rev"], "params": r["data"]["params"]["params.yaml"]["data"]}
        for rev in shown
        for e in rev.get("experiments") or []
        for r in e["revs"]
    ]


def test_a_workspace_with_uncommitted_changes_is_refused_before_anything_runs(flow_project):
    params = Path("params.yaml").read_text()
    changed = re.sub(r"min_delta: [0-9.]+", "min_delta: 0.01", params)
    assert changed != params
    Path("params.yaml").write_text(changed)
    result = subprocess.run(
        [sys.executable, "-m", "flows.retrain"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert error_line(result).startswith("error: uncommitted changes to params.yaml: commit")
    assert "min_delta: 0.01" in Path("params.yaml").read_text()
    assert not (flow_project / "data" / "raw").exists()  # download never ran


def test_a_checkout_without_a_git_identity_is_refused_before_anything_runs(flow_project):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", EMAIL="")
    result = subprocess.run(
        [sys.executable, "-m", "flows.retrain"], capture_output=True, text=True, timeout=120,
        env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert error_line(result).startswith("error: git has no user.name and user.email here")
    assert not (flow_project / "data" / "raw").exists()


# What anyone allowed to start a run can pass; the run fails before params.yaml is written.
REFUSED = {
    "+register.new=1": r"^bad parameter override \+register.new=1: params.yaml's keys can be "
    r"set \(KEY=VALUE\), not added \(\+KEY=, \+\+KEY=\) or deleted \(~KEY\)$",
    "train.nope=1": r"^bad parameter override train.nope=1: params.yaml has no "
    r"train.nope \(train: use_tuned, architecture, .*\)$",
    "register.min_delta=-1": r"^bad parameter override register.min_delta=-1: a run's "
    r"parameters cannot change register.\*: data comes from the committed params.yaml",
    "train.epochs=abc": r"^bad parameter override train.epochs=abc: params.yaml: "
    r"train.epochs: expected int, got str 'abc'$",
    # would copy a secret of the flow's environment into params.yaml, MLflow and dvc.lock
    "register.model_name=${oc.env:PREFECT_API_AUTH_STRING}": r"^bad parameter override "
    r"register.model_name=\$\{oc.env:PREFECT_API_AUTH_STRING\}: interpolations \(\$\{...\}\) "
    r"are not allowed, only values$",
}


@pytest.mark.extended  # a flow project per case: 3 min
@pytest.mark.parametrize("override", REFUSED)
def test_flow_run_with_a_refused_override_fails_and_leaves_params(harness, flow_project, override):
    before, written = Path("params.yaml").read_bytes(), Path("params.yaml").stat().st_mtime_ns
    state = flow_module.retrain(set_params=[override], return_state=True)
    assert state.is_failed(), state
    with pytest.raises(flow_module.PipelineError, match=REFUSED[override]):
        state.result()
    assert Path("params.yaml").read_bytes() == before
    assert Path("params.yaml").stat().st_mtime_ns == written
    assert task_names(state.state_details.flow_run_id) == []  # no stage ran


def test_a_failed_run_is_announced_through_the_webhook_block(harness, flow_project, monkeypatch):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from cifar10_mlops.ops import notify

    monkeypatch.setenv(notify.ALLOW_PRIVATE_ENV, "1")  # the receiver is on 127.0.0.1
    with webhook_receiver() as (hook, received):
        notify.save(hook, allow_private=True)
        try:
            state = flow_module.retrain(set_params=["train.epochs=0"], return_state=True)
        finally:
            CustomWebhookNotificationBlock.delete(notify.block_name())
    assert state.is_failed()
    [message] = received
    assert message["subject"].startswith("retrain ") and message["subject"].endswith(" failed")
    assert "train.epochs: must be >= 1, got 0" in message["body"]
    assert str(state.state_details.flow_run_id) in message["body"]


@pytest.mark.parametrize("variable", ["MLFLOW_TRACKING_URI", "PREFECT_API_URL"])
def test_unreachable_server_fails_before_anything_runs(flow_project, variable):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}" + (
            "/api" if "PREFECT" in variable else ""
        )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.retrain"],
        cwd=flow_project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, variable: url},
    )
    assert result.returncode == 1
    assert time.monotonic() - start < 60
    last = error_line(result)
    assert last.startswith("error: ") and f"{url} is unreachable" in last, result.stderr
    assert not (flow_project / "data" / "raw").exists()  # download never ran
