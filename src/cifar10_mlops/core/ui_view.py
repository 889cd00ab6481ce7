"""The experiment's saved views in the MLflow UI: the runs list's useful columns, and charts
that put training and validation on one chart.

MLflow's UI opens a view that someone shared (its "Share" button) from an experiment tag,
`mlflow.sharedViewState.<key>`, when the page's address ends in `?viewStateShareKey=<key>`.
`tracking.configure` writes two such tags on every run, so that they match the metric names
of the code that logs (core/metric_names.py):

- `overview`: every run, newest first, a search's trials folded under it;
- `leaderboard`: the trained models only (runs with `test/accuracy`), best first.

    http://127.0.0.1:5000/#/experiments/<id>/runs?viewStateShareKey=overview
    (add &compareRunsMode=CHART for the charts)

The tag holds the view as JSON: the search facets (`orderByKey`, `orderByAsc`) and the UI
state (`selectedColumns`, `compareRunCharts`, `compareRunSections`), in the UI's own format
(mlflow/server/js/src/experiment-tracking/components/runs-charts/runs-charts.types.ts).
"""

from __future__ import annotations

import json

PREFIX = "mlflow.sharedViewState."
NOTE = "mlflow.note.content"  # the experiment's description, in the experiments list
DESCRIPTION = (
    "CIFAR-10 CNN: searches, trainings, their models and datasets. Saved views: add "
    "?viewStateShareKey=leaderboard (best test accuracy first) or =overview to this address."
)
# The UI opens an experiment of this kind on its runs, not on the GenAI (traces) overview.
KIND = ("mlflow.experimentKind", "custom_model_development")

# (column group, name): the runs list's columns after the run name, in this order.
COLUMNS = [
    ("metrics", "test/accuracy"),
    ("metrics", "test/f1_weighted"),
    ("metrics", "val/best_accuracy"),
    ("metrics", "trial/score"),
    ("metrics", "train/seconds"),
    ("params", "train.architecture"),
    ("params", "train.epochs"),
    ("params", "seed"),
    ("attributes", "Models"),
]
# (title, metrics on one chart): line charts per epoch, training beside validation.
CURVES = [
    ("Accuracy per epoch: train and validation", ["train/accuracy", "val/accuracy"]),
    ("Loss per epoch: train and validation", ["train/loss", "val/loss"]),
    ("Learning rate per epoch", ["train/learning_rate"]),
]
# Bar charts, one value per run.
SCORES = ["test/accuracy", "test/f1_weighted", "val/best_accuracy", "trial/score"]
# Sections the UI would open with a chart per class: kept, folded away.
FOLDED = ["test/f1", "test/precision", "test/recall", "train", "val", "trial", "search", "test"]


def column(group: str, name: str) -> str:
    """The UI's key of a runs-list column: group.`name`."""
    return f"{group}.`{name}`"


def _line(uuid: str, section: str, title: str, keys: list[str]) -> dict:
    return {
        "uuid": uuid, "type": "LINE", "displayName": title, "metricSectionId": section,
        "metricKey": keys[0], "selectedMetricKeys": keys, "runsCountToCompare": 10,
        "deleted": False, "isGenerated": False, "lineSmoothness": 0, "scaleType": "linear",
        "xAxisScaleType": "linear", "xAxisKey": "step", "selectedXAxisMetricKey": "",
        "useGlobalXaxisKey": False, "useGlobalLineSmoothing": False, "range": {},
    }  # fmt: skip


def _bar(uuid: str, section: str, key: str) -> dict:
    return {
        "uuid": uuid, "type": "BAR", "metricKey": key, "metricSectionId": section,
        "runsCountToCompare": 10, "deleted": False, "isGenerated": False,
    }  # fmt: skip


def _section(uuid: str, name: str, display: bool) -> dict:
    return {"uuid": uuid, "name": name, "display": display, "isReordered": False,
            "deleted": False, "isGenerated": not display}  # fmt: skip


def view(order_by: str, ascending: bool, search: str = "") -> dict:
    """A saved view, as the UI reads it from its tag: the search facets, then the UI state."""
    charts = [_line(f"curve-{i}", "curves", t, keys) for i, (t, keys) in enumerate(CURVES)]
    charts += [_bar(f"score-{i}", "scores", key) for i, key in enumerate(SCORES)]
    sections = [_section("curves", "Curves: train and validation", True)]
    sections += [_section("scores", "Scores", True)]
    sections += [_section(f"folded-{name}", name, False) for name in FOLDED]
    return {
        "searchFilter": search,
        "orderByKey": order_by,
        "orderByAsc": ascending,
        "selectedColumns": [column(group, name) for group, name in COLUMNS],
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def views() -> dict[str, dict]:
    """The saved views by share key. Sorted by a metric, the UI lists a search's trials beside
    it rather than under it, hence the leaderboard's filter."""
    accuracy = column("metrics", "test/accuracy")
    return {
        "overview": view("attributes.start_time", ascending=False),
        "leaderboard": view(accuracy, ascending=False, search=f"{accuracy} > 0"),
    }


def save(client, experiment_id: str) -> None:
    """Write the saved views and the experiment's kind to its tags, unless they are there, and
    a description unless the experiment has one (someone may have written theirs)."""
    tags = client.get_experiment(experiment_id).tags
    if not tags.get(NOTE):
        client.set_experiment_tag(experiment_id, NOTE, DESCRIPTION)
    wanted = [KIND] + [
        (PREFIX + k, json.dumps(v, separators=(",", ":"))) for k, v in views().items()
    ]
    for key, value in wanted:
        if tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
