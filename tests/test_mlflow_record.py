"""What the MLflow UI and `dvc plots` show after `dvc repro`, read back as they read it: the
training run, its logged model, its datasets and the registered model. A copy of conftest's
reproduced tiny pipeline."""

import csv
import json
import re

import mlflow
import numpy as np
import pytest
import yaml

from cifar10_mlops.core import artifacts, lineage
from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.core.splits import load_split

pytestmark = pytest.mark.integration

MODEL = "cifar10-cnn"


def read(project, name: str):
    return json.loads((project / name).read_text())


def test_the_training_run_names_its_values_splits_and_epochs_as_the_files_do(reproduced):
    project = reproduced
    info = read(project, "models/run.json")
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    run = client.get_run(info["run_id"])

    # a name the runs list shows whole, a description with the values actually used
    assert re.fullmatch(r"train-baseline-1ep-\d{4}-\d{4}", run.info.run_name), run.info.run_name
    description = run.data.tags["mlflow.note.content"]
    best = read(project, "models/best_hparams.json")
    if best["hyperparameters"]:
        for key, value in best["hyperparameters"].items():
            assert re.search(rf"{key} {value:g}" if isinstance(value, float) else
                             f"{key} {value}", description), (key, description)  # fmt: skip
    else:
        assert "(params.yaml values)" in description
    params = run.data.params
    assert f"{params['train.optimizer']} lr {float(params['train.learning_rate']):g}" in description

    # metrics grouped by '/'; epochs counted from 1 in MLflow as in history.csv
    with open(project / "reports/train/history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    assert [int(h["epoch"]) for h in history] == [1]
    for key, column in [("val/accuracy", "val_accuracy"), ("train/loss", "loss")]:
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [1], key
        assert logged[0].value == pytest.approx(float(history[0][column]), abs=1e-6)
    metrics = read(project, "reports/metrics.json")
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test/f1/cat"] == pytest.approx(metrics["per_class"]["cat"]["f1"])
    assert not [k for k in run.data.metrics if "_" in k.split("/")[0]]  # no flat test_* names
    assert run.data.metrics["val/best_epoch"] == 1

    # each split its own digest and class counts; the folder's DVC hash beside them
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    [prepared] = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared"]
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10-train", "cifar10-val", "cifar10-test"}
    digests = set()
    for split, context in [("train", "training"), ("val", "validation"), ("test", "testing")]:
        x, y = load_split(project / "data/prepared", split)
        logged = inputs[f"cifar10-{split}"]
        tags = {t.key: t.value for t in logged.tags}
        assert logged.dataset.digest == lineage.split_digest(x, y), split
        assert tags["mlflow.data.context"] == context and tags["dvc_md5"] == prepared["md5"]
        counts = np.bincount(y, minlength=10)
        assert tags["class_counts"] == ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts))
        assert tags["images"] == str(len(y))
        digests.add(logged.dataset.digest)
    assert len(digests) == 3


def test_the_logged_model_carries_its_own_final_metrics_only(reproduced):
    project = reproduced
    info = read(project, "models/run.json")
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    run = client.get_run(info["run_id"])
    [logged] = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], order_by=[{"field_name": "metrics.test/accuracy"}],
        output_format="list",
    )  # fmt: skip
    assert logged.source_run_id == run.info.run_id
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [
        (logged.model_id, info["epoch"])
    ]
    by_name = {m.key: m for m in logged.metrics}
    metrics = read(project, "reports/metrics.json")
    x, y = load_split(project / "data/prepared", "test")
    assert by_name["test/accuracy"].value == pytest.approx(metrics["accuracy"])
    assert by_name["test/accuracy"].dataset_digest == lineage.split_digest(x, y)
    description = logged.tags["mlflow.note.content"]  # the model page's description
    assert f"{run.info.run_name} after epoch {info['epoch']}" in description
    assert f"test accuracy {metrics['accuracy']:.4f}" in description
    # the saved epoch's own validation score, not epoch 0's or a system sample's
    with open(project / "reports/train/history.csv", newline="") as fh:
        saved = [h for h in csv.DictReader(fh) if int(h["epoch"]) == info["epoch"]][0]
    assert by_name["val/accuracy"].value == pytest.approx(float(saved["val_accuracy"]), abs=1e-6)
    assert not [k for k in by_name if k.startswith("system/")]
    assert {k.split("/")[0] for k in by_name} == {"test", "train", "val"}
    # the run's params, and the digests checked before the model loads (core/artifacts.py)
    recorded = {artifacts.MODEL_PARAM, artifacts.PREDICTIONS_PARAM, artifacts.REFERENCE_PARAM}
    trained = {key for key in run.data.params if not key.startswith(artifacts.STATE_PARAM)}
    assert set(logged.params) == {*trained, *recorded}
    assert all(len(logged.params[key]) == 64 for key in recorded)


def test_the_registered_model_says_what_to_send_and_what_the_aliases_mean(reproduced):
    client = mlflow.MlflowClient(f"sqlite:///{reproduced}/mlruns/mlflow.db")
    description = client.get_registered_model(MODEL).description
    assert f'mlflow.pyfunc.load_model("models:/{MODEL}@champion")' in description
    assert "shape (n, 32, 32, 3)" in description and ", ".join(CLASSES) in description
    assert "No MLflow signature" in description and "`challenger`" in description
    version = client.get_model_version(MODEL, "1")
    assert version.description.startswith("Champion: the first version of cifar10-cnn")


def test_the_saved_views_name_metrics_and_params_the_runs_have(reproduced):
    """The runs list and charts of `?viewStateShareKey=overview|leaderboard` show values, not
    empty columns: every metric and param a view names was logged by a run of the pipeline."""
    client = mlflow.MlflowClient(f"sqlite:///{reproduced}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(MODEL)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    metrics = {key for run in runs for key in run.data.metrics}
    params = {key for run in runs for key in run.data.params}
    for key in ("overview", "leaderboard"):
        view = json.loads(experiment.tags[f"mlflow.sharedViewState.{key}"])
        named = [re.fullmatch(r"(\w+)\.`(.+)`", c).groups() for c in view["selectedColumns"]]
        assert {name for group, name in named if group == "metrics"} <= metrics, key
        assert {name for group, name in named if group == "params"} <= params, key
        charted = {k for chart in view["compareRunCharts"] for k in
                   chart.get("selectedMetricKeys", [chart["metricKey"]])}  # fmt: skip
        assert {"train/accuracy", "val/accuracy", "train/loss", "val/loss"} <= charted <= metrics
        shared = [c["selectedMetricKeys"] for c in view["compareRunCharts"] if c["type"] == "LINE"]
        assert ["train/accuracy", "val/accuracy"] in shared, key  # one chart, both splits
    leaderboard = json.loads(experiment.tags["mlflow.sharedViewState.leaderboard"])
    assert leaderboard["orderByKey"] == "metrics.`test/accuracy`" and not leaderboard["orderByAsc"]
    listed = client.search_runs([experiment.experiment_id], leaderboard["searchFilter"])
    assert [r.info.run_id for r in listed] == [read(reproduced, "models/run.json")["run_id"]]


def test_dvc_plots_label_every_axis_and_draw_the_searched_values(reproduced):
    project = reproduced
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    for plot in plots:
        if isinstance(plot, dict):
            [(title, spec)] = plot.items()
            assert spec.get("y_label"), title
            assert spec.get("x_label") or spec["template"] == "searched_scatter", title
    # the searched parameters of the tiny space, not a hard-coded one
    with open(project / "reports/tune/searched.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["parameter"] for r in rows} == {
        "conv_1_filters", "conv_2_filters", "dense_units", "learning_rate",
        "optimizer (0=adam, 1=sgd)",
    }  # fmt: skip
    with open(project / "reports/tune/trials.csv", newline="") as fh:
        scored = [r for r in csv.DictReader(fh) if r["score"]]
    assert len(rows) == 5 * len(scored)
