"""The retrain flow's report (ops/retrain_report.py), built from the register stage's files:
what ran, the metrics, links into the MLflow UI, and news only of a new champion. The report
of a real flow run is checked in test_flows.py."""

import json

import pytest

from cifar10_mlops.ops import retrain_report

RAN = {"download": False, "prepare": False, "train": True, "evaluate": True, "register": True}
METRICS = {"accuracy": 0.91234, "f1_weighted": 0.9, "f1_macro": 0.89, "loss": 0.3}
RUN = {"tracking_uri": "sqlite:///mlruns/mlflow.db", "experiment_id": "1", "run_id": "abc123"}
EXPERIMENT = {"name": "retrain-1", "rev": "0123456789ab", "pushed": "origin", "note": ""}


@pytest.fixture
def files(tmp_path):
    """Writes the register stage's files with the registry's `changes`; returns their paths."""

    def write(**changes):
        registry = {
            "model_name": "cifar10-cnn", "version": 3, "aliases": ["champion"],
            "reason": "promoted", "champion": 3, "champion_before": 2, **changes,
        }  # fmt: skip
        paths = {name: tmp_path / f"{name}.json" for name in ("metrics", "out", "run-info")}
        for name, content in zip(paths, (METRICS, registry, RUN)):
            paths[name].write_text(json.dumps(content))
        return paths

    return write


def test_a_new_champion_is_reported_and_announced(files, monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    report = retrain_report.build(RAN, EXPERIMENT, files(), up_to_date=True)
    markdown = report["markdown"]
    assert "| ran | up to date | up to date | yes | yes | yes |" in markdown
    assert "| 0.9123 | 0.9000 | 0.8900 | 0.3000 |" in markdown
    assert "[abc123](http://127.0.0.1:5123/#/experiments/1/runs/abc123)" in markdown
    assert "`retrain-1` (0123456), pushed to `origin`" in markdown
    subject, body = report["news"]
    assert subject == "new champion: cifar10-cnn v3"
    assert "was v2" in body and body.endswith(
        "http://127.0.0.1:5123/#/models/cifar10-cnn/versions/3"
    )


def test_no_news_when_the_champion_stays(files, monkeypatch):
    monkeypatch.setenv("MLFLOW_UI_URL", "https://mlflow.example/")
    kept = files(version=4, aliases=["challenger"], reason="kept champion", champion=3,
                 champion_before=3)  # fmt: skip
    report = retrain_report.build(RAN, {"name": None, "note": "nothing ran"}, kept, False)
    assert report["news"] is None
    assert "https://mlflow.example/#/models/cifar10-cnn/versions/4" in report["markdown"]
    assert "- DVC experiment: none, nothing ran" in report["markdown"]
    assert "`dvc status`: CHANGED" in report["markdown"]
