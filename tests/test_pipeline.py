"""End to end: `dvc repro` in a scratch copy of the repository, on a tiny synthetic archive."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from cifar10_mlops.register import lock_digest


def dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        [str(Path(bin_dir) / "dvc"), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return [
        line.split("'")[1]
        for line in result.stdout.splitlines()
        if line.startswith("Running stage")
    ]


def test_dvc_repro_end_to_end(pipeline):
    first = dvc(pipeline, "repro")
    assert ran(first) == ["download", "prepare", "tune", "train", "evaluate", "register"]
    for path in (
        "data/raw/manifest.json",
        "data/prepared/test.npz",
        "models/best_hparams.json",
        "reports/tune/trials.csv",
        "models/model.keras",
        "reports/metrics.json",
        "reports/evaluate/confusion_matrix.png",
        "reports/registry.json",
        "dvc.lock",
    ):
        assert (pipeline / path).is_file(), path

    shown = json.loads(dvc(pipeline, "metrics", "show", "--json").stdout)
    [workspace] = shown.values()  # keyed by revision; the workspace is the only one here
    metrics = workspace["data"]["reports/metrics.json"]["data"]
    assert 0 <= metrics["accuracy"] <= 1 and "f1_weighted" in metrics
    assert workspace["data"]["reports/tune/summary.json"]["data"]["trials"] == 5

    plots = dvc(pipeline, "plots", "show", "-o", "plots-html")
    html = (pipeline / "plots-html" / "index.html").read_text()
    assert "Confusion matrix (test)" in html and "Learning curves (accuracy)" in html
    assert "confusion_matrix.png" in html, plots.stdout
    assert "Tuning trials (score by learning rate)" in html and "trials.png" in html

    # train ran with the searched values of the best trial, not params.yaml's.
    best = json.loads((pipeline / "models" / "best_hparams.json").read_text())

    run_id = json.loads((pipeline / "models" / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags["hparams_source"] == "tune"
    assert run.data.tags["tune_run_id"] == best["mlflow_run_id"]
    for key, value in best["hyperparameters"].items():
        assert run.data.params[f"train.{key}"] == str(value), key
    assert (
        run.data.tags["data_sha256"]
        == json.loads((pipeline / "data/raw/manifest.json").read_text())["sha256"]
    )
    assert (
        len(
            mlflow.search_logged_models(
                experiment_ids=[run.info.experiment_id], output_format="list"
            )
        )
        == 1
    )

    # the model of that run is the registry's first version and champion, with lineage
    registry = json.loads((pipeline / "reports" / "registry.json").read_text())
    assert registry["version"] == 1 and registry["aliases"] == ["champion", "challenger"]
    version = mlflow.MlflowClient().get_model_version_by_alias("cifar10-cnn", "champion")
    assert version.run_id == run_id
    assert version.tags["dvc_lock_sha256"] == lock_digest(pipeline / "dvc.lock")
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())
    [model_out] = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.keras"]
    assert version.tags["model_md5"] == model_out["md5"]

    again = dvc(pipeline, "repro")
    assert ran(again) == [] and "Data and pipelines are up to date" in again.stdout

    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the search is still valid; the new model is registered as version 2
    assert ran(dvc(pipeline, "repro")) == ["train", "evaluate", "register"]
    assert json.loads((pipeline / "reports" / "registry.json").read_text())["version"] == 2
    assert "Data and pipelines are up to date" in dvc(pipeline, "status").stdout

    params["tune"]["enabled"] = False
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(pipeline, "repro")) == ["tune", "train", "evaluate", "register"]
    run = mlflow.get_run(json.loads((pipeline / "models" / "run.json").read_text())["run_id"])
    assert run.data.tags["hparams_source"] == "params"
    assert run.data.params["train.conv_1_filters"] == str(params["train"]["conv_1_filters"])


def test_dvc_exp_run_logs_to_the_repository_store_and_leaves_the_workspace(pipeline):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "add", "-A"], cwd=pipeline, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=pipeline, check=True)
    dvc(pipeline, "exp", "run", "--temp", "-n", "two-epochs", "-S", "train.epochs=2")
    assert yaml.safe_load((pipeline / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = json.loads(dvc(pipeline, "exp", "show", "--json").stdout)
    [experiment] = [e for rev in shown for e in (rev.get("experiments") or [])]
    [exp_rev] = experiment["revs"]
    assert exp_rev["name"] == "two-epochs"
    data = exp_rev["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    accuracy = data["metrics"]["reports/metrics.json"]["data"]["accuracy"]
    # The temporary copy is gone, but its MLflow run is in the repository's own store.
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    [exp_run] = [r for r in runs if r.data.params.get("train.epochs") == "2"]
    assert exp_run.data.metrics["test_accuracy"] == pytest.approx(accuracy)


def test_search_killed_under_dvc_repro_resumes_on_the_next_repro(pipeline):
    """What a user does: `dvc repro`, the search dies (kill -9), `dvc repro` again."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    repro = subprocess.Popen(
        [str(Path(bin_dir) / "dvc"), "repro"],
        cwd=pipeline,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    for line in repro.stdout:
        output.append(line)
        if line.startswith("[tune] trial 3 of"):  # two trials done, the third running
            search = subprocess.run(
                ["pgrep", "-f", "cifar10_mlops.tune --data"], capture_output=True, text=True
            ).stdout.split()
            subprocess.run(["kill", "-9", *search], check=True)
    assert repro.wait(timeout=120) != 0, "".join(output)
    assert not (pipeline / "models" / "best_hparams.json").exists()

    again = dvc(pipeline, "repro")
    assert ran(again) == ["tune", "train", "evaluate", "register"]
    assert "resuming after 2 finished trials" in again.stdout
    assert "[tune] trial 1 of" not in again.stdout
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    statuses = sorted({r.info.status for r in runs})
    assert statuses == ["FINISHED", "KILLED"]
    rows = (pipeline / "reports" / "tune" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
