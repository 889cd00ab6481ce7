"""End to end: `dvc repro` in a scratch copy of the repository, on a tiny synthetic archive.

The first `dvc repro` from scratch is conftest's `reproduced_once` (made once per test run);
each test here works on a copy of it, as a teammate would on a clone after `make repro`.
"""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from cifar10_mlops.core.repo import uncached_outputs
from cifar10_mlops.stages.register import lock_digest
from helpers import ran
from helpers import run_dvc as dvc

pytestmark = pytest.mark.integration


def test_dvc_repro_end_to_end(reproduced, reproduced_once):
    pipeline = reproduced
    first = (reproduced_once / "repro.log").read_text()
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

    # no output names the machine it was made on: the same inputs give the same hashes in
    # every clone, and the committed files say nothing about a laptop's folders
    made_in = str(reproduced_once)
    texts = [*uncached_outputs(pipeline / "dvc.yaml"), "data/raw/manifest.json",
             "data/prepared/manifest.json", "models/best_hparams.json"]  # fmt: skip
    for path in texts:
        assert made_in not in (pipeline / path).read_text(), path

    shown = json.loads(dvc(pipeline, "metrics", "show", "--json").stdout)
    [workspace] = shown.values()  # keyed by revision; the workspace is the only one here
    metrics = workspace["data"]["reports/metrics.json"]["data"]
    assert 0 <= metrics["accuracy"] <= 1 and "f1_weighted" in metrics
    assert workspace["data"]["reports/tune/summary.json"]["data"]["trials"] == 5

    plots = dvc(pipeline, "plots", "show", "-o", "plots-html")
    html = (pipeline / "plots-html" / "index.html").read_text()
    assert "Test: confusion matrix" in html and "Training: accuracy per epoch" in html
    assert "Search: score by searched value" in html and "trials.png" in html, plots.stdout
    assert "confusion_matrix.png" not in html  # each figure once: the Vega one

    # train ran with the searched values when the search adopted them past its noise check,
    # else with params.yaml's; either way it links the search
    best = json.loads((pipeline / "models" / "best_hparams.json").read_text())
    assert best["hyperparameters"] == (best["best_trial_values"] if best["adopted"] else {})

    run_id = json.loads((pipeline / "models" / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags["hparams_source"] == ("tune" if best["adopted"] else "params")
    assert run.data.tags["tune_run_id"] == best["mlflow_run_id"]
    for key, value in best["hyperparameters"].items():
        assert run.data.params[f"train.{key}"] == str(value), key
    assert (
        run.data.tags["data_sha256"]
        == json.loads((pipeline / "data/raw/manifest.json").read_text())["sha256"]
    )
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())
    # (what the MLflow UI shows of this run, its model and its version: test_mlflow_record.py)

    # the model of that run is the registry's first version and champion, with lineage
    registry = json.loads((pipeline / "reports" / "registry.json").read_text())
    assert registry["version"] == 1 and registry["aliases"] == ["champion", "challenger"]
    version = mlflow.MlflowClient().get_model_version_by_alias("cifar10-cnn", "champion")
    assert version.run_id == run_id
    assert version.tags["dvc_lock_sha256"] == lock_digest(pipeline / "dvc.lock")
    [model_out] = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.keras"]
    assert version.tags["model_md5"] == model_out["md5"]

    again = dvc(pipeline, "repro")
    assert ran(again) == [] and "Data and pipelines are up to date" in again.stdout


@pytest.mark.extended  # dvc repro three times: 3 min
def test_a_changed_param_reruns_only_the_stages_it_feeds(retrained, retrained_once):
    pipeline = retrained  # train.epochs 1 -> 2, then `dvc repro`
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    # the search is still valid; the new model is registered as version 2
    assert ran((retrained_once / "repro.log").read_text()) == ["train", "evaluate", "register"]
    assert json.loads((pipeline / "reports" / "registry.json").read_text())["version"] == 2
    assert "Data and pipelines are up to date" in dvc(pipeline, "status").stdout

    params["tune"]["enabled"] = False
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(pipeline, "repro")) == ["tune", "train", "evaluate", "register"]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    run = mlflow.get_run(json.loads((pipeline / "models" / "run.json").read_text())["run_id"])
    assert run.data.tags["hparams_source"] == "params"
    assert run.data.params["train.conv_1_filters"] == str(params["train"]["conv_1_filters"])


@pytest.mark.extended
def test_search_killed_under_dvc_repro_resumes_on_the_next_repro(reproduced):
    """What a user does: `dvc repro`, the search dies (kill -9), `dvc repro` again: the
    finished trials are not run again, and no MLflow run is left RUNNING."""
    pipeline = reproduced
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["tune"]["seed"] = 7  # another search
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    repro = subprocess.Popen(
        [str(Path(bin_dir) / "dvc"), "repro"], cwd=pipeline, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = []
    for line in repro.stdout:
        output.append(line)
        if line.startswith("[tune] trial 3 of"):  # two trials done, the third running
            time.sleep(1)
            kill_stage(repro.pid, "cifar10_mlops.stages.tune")
    assert repro.wait(timeout=120) != 0, "".join(output)
    assert not (pipeline / "models" / "best_hparams.json").exists()
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    [killed] = [r for r in tune_runs() if r.info.status == "RUNNING"]  # nobody could end it

    again = dvc(pipeline, "repro")
    assert ran(again) == ["tune", "train", "evaluate", "register"]
    assert "resuming after 2 finished trials" in again.stdout
    assert "[tune] trial 1 of" not in again.stdout  # trials 1 and 2 were not run again
    assert "[tune] trial 3 of" in again.stdout
    assert mlflow.get_run(killed.info.run_id).info.status == "KILLED"
    runs = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    assert sorted({r.info.status for r in runs}) == ["FINISHED", "KILLED"]
    search = killed.data.tags["search_id"]
    [resumed] = [
        r for r in tune_runs()
        if r.data.tags["search_id"] == search and r.info.status == "FINISHED"
    ]  # fmt: skip
    assert resumed.data.tags["resumed"] == "true"
    with open(pipeline / "reports" / "tune" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and all(r["status"] == "COMPLETED" for r in rows)
    summary = json.loads((pipeline / "reports" / "tune" / "summary.json").read_text())
    assert summary["epochs_run"] == 7  # the killed trial's partial epochs are not counted


def tune_runs() -> list:
    runs = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    return [r for r in runs if r.data.tags.get("stage") == "tune"]


def kill_stage(parent: int, module: str) -> None:
    """kill -9 the stage process running `module` among `parent`'s descendants only (other
    tests may run the same stage at the same time)."""
    import psutil

    found = []
    for process in psutil.Process(parent).children(recursive=True):
        try:
            if module in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # exited while we looked
            continue
    assert found, f"no {module} process under {parent}"
    for process in found:
        process.kill()
