"""The MLflow UI's saved views (core/ui_view.py), written as experiment tags into a real
sqlite store."""

import json

import mlflow

from cifar10_mlops.core import ui_view


class CountingClient(mlflow.MlflowClient):
    """A real client that counts the experiment tags it writes."""

    writes = 0

    def set_experiment_tag(self, *args, **kwargs):
        self.writes += 1
        return super().set_experiment_tag(*args, **kwargs)


def test_views_are_written_once_and_rewritten_when_someone_changed_them(tmp_path):
    client = CountingClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("cifar10-cnn")
    ui_view.save(client, experiment_id)
    tags = client.get_experiment(experiment_id).tags
    assert client.writes == 4  # a description, the experiment's kind and two views
    assert "?viewStateShareKey=leaderboard" in tags["mlflow.note.content"]
    assert json.loads(tags["mlflow.sharedViewState.overview"])["orderByKey"] == (
        "attributes.start_time"
    )
    ui_view.save(client, experiment_id)
    assert client.writes == 4  # a second run of any stage leaves them alone

    client.set_experiment_tag(experiment_id, "mlflow.sharedViewState.leaderboard", "{}")
    ui_view.save(client, experiment_id)
    assert client.get_experiment(experiment_id).tags == tags


def test_the_overview_lists_every_run_and_the_leaderboard_trained_models_best_first():
    views = ui_view.views()
    assert views["overview"]["searchFilter"] == ""
    leaderboard = views["leaderboard"]
    assert leaderboard["searchFilter"] == "metrics.`test/accuracy` > 0"
    assert leaderboard["selectedColumns"][0] == "metrics.`test/accuracy`"
    sections = {s["uuid"]: s for s in leaderboard["compareRunSections"]}
    charts = leaderboard["compareRunCharts"]
    assert {c["metricSectionId"] for c in charts} == {"curves", "scores"}
    assert sections["curves"]["display"] and sections["scores"]["display"]
    assert not sections["folded-test/f1"]["display"]  # ten charts per class stay folded


def test_a_description_someone_wrote_is_kept(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("cifar10-cnn")
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "Our team's runs")
    ui_view.save(client, experiment_id)
    assert client.get_experiment(experiment_id).tags["mlflow.note.content"] == "Our team's runs"
