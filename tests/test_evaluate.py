import csv
import json

import mlflow
import numpy as np
import pytest

from cifar10_mlops.stages import evaluate, train
from cifar10_mlops.training import gate
from cifar10_mlops.core import artifacts
from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.monitoring import reference
from cifar10_mlops.core.splits import load_split
from helpers import error_line, stage_args


def test_score_matches_hand_computed_metrics():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 2, 2, 0])
    probs = np.full((len(y), 10), 0.01)
    probs[np.arange(len(y)), pred] = 0.91
    m = evaluate.score(y, probs)
    assert m["accuracy"] == pytest.approx(6 / 8)
    f1 = {
        "airplane": 2 * 0.5 * 0.5 / 1.0,
        "automobile": 2 * (2 / 3) * 1 / (2 / 3 + 1),
        "bird": 2 * 1 * 0.75 / 1.75,
    }
    for cls, value in f1.items():
        assert m["per_class"][cls]["f1"] == pytest.approx(value)
    assert m["f1_weighted"] == pytest.approx(
        (2 * f1["airplane"] + 2 * f1["automobile"] + 4 * f1["bird"]) / 8
    )
    assert m["f1_macro"] == pytest.approx(sum(f1.values()) / 10)  # absent classes count as 0
    assert m["loss"] == pytest.approx(-np.log(np.where(pred == y, 0.91, 0.01)).mean(), rel=1e-6)


@pytest.fixture
def trained(in_project, prepared, params_file):
    params = params_file(**{"train.epochs": 2, "train.use_tuned": False})
    train.main(["--params", str(params), *stage_args("train")])
    return params


def run_evaluate(params, prepared):
    evaluate.main(["--params", str(params), *stage_args("evaluate")])


def test_evaluate_writes_reports_and_logs_into_the_training_run(in_project, prepared, trained):
    run_evaluate(trained, prepared)
    metrics = json.loads((in_project / "reports" / "metrics.json").read_text())
    assert {"loss", "accuracy", "f1_weighted", "f1_macro", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == set(CLASSES)
    with open(in_project / "reports" / "evaluate" / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and set(rows[0]) == {"actual", "predicted"}
    assert sum(r["actual"] == r["predicted"] for r in rows) / 40 == pytest.approx(
        metrics["accuracy"]
    )
    for png in ("confusion_matrix.png", "learning_curves.png"):
        assert (in_project / "reports" / "evaluate" / png).stat().st_size > 20_000

    run_id = json.loads((in_project / "models" / "run.json").read_text())["run_id"]
    run = mlflow.get_run(run_id)
    assert [
        r.info.run_id
        for r in mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    ] == [run_id]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test/f1_weighted"] == pytest.approx(metrics["f1_weighted"])
    assert "test/recall/cat" in run.data.metrics
    assert "train.epochs" in run.data.params  # still the training run
    logged_files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert logged_files == {
        "evaluation/confusion_matrix.png",
        "evaluation/drift_reference.npz",
        "evaluation/learning_curves.png",
        "evaluation/metrics.json",
        "evaluation/test_predictions.npz",
    }
    # each test image's probabilities, for the promotion gate: the same as the keras model's
    predictions = gate.load_predictions(in_project / "reports/evaluate/test_predictions.npz")
    x, y = load_split(prepared, "test")
    assert predictions.test_sha256 == gate.test_digest(x, y) == run.data.tags["test_sha256"]
    np.testing.assert_array_equal(predictions.labels, y)
    assert (predictions.predicted == y).mean() == pytest.approx(metrics["accuracy"])

    [logged] = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert logged.source_run_id == run_id
    # the drift reference: every validation image (fewer than reference_images), its digest
    # recorded where `cifar10-mlops drift` checks it
    saved = in_project / "reports/evaluate" / reference.FILE
    assert len(reference.load(saved)["embeddings"]) == len(load_split(prepared, "val")[1])
    assert logged.params[artifacts.REFERENCE_PARAM] == artifacts.digest(saved)
    assert run.data.tags["model_uri"] == logged.model_uri  # what `register` registers
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    np.testing.assert_allclose(
        predictions.probabilities,
        pyfunc.unwrap_python_model().model.predict(x, verbose=0),
        rtol=1e-5,
    )
    assert pyfunc.metadata.signature is None  # pyfunc.py checks the input itself
    assert pyfunc.metadata.metadata["classes"] == list(CLASSES)
    images = np.load(prepared / "test.npz")["x"][:5]
    keras_model = pyfunc.unwrap_python_model().model
    np.testing.assert_allclose(
        pyfunc.predict(images), keras_model.predict(images, verbose=0), rtol=1e-5
    )


def test_evaluate_before_training_says_so(in_project, prepared, params_file, run_module):
    params = str(params_file())
    result = run_module(
        "cifar10_mlops.stages.evaluate", "--params", params, *stage_args("evaluate"), cwd=in_project
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: models/model.keras not found: run the train stage first"


def write_model_run(in_project, model) -> None:
    """models/ as train leaves them, for `model`, without a training run behind it."""
    (in_project / "models").mkdir(exist_ok=True)
    model.save(in_project / "models" / "model.keras")
    (in_project / "models" / "run.json").write_text('{"run_id": "x", "experiment_id": "0"}')
    history = in_project / "reports" / "train" / "history.csv"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n")


@pytest.mark.extended  # an evaluate process per case: 1 min
@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("nan", "predicts NaN or infinite values for 40 of 40 test images"),
        ("shape", "predicts shape (40, 3) for 40 images, expected (40, 10)"),
        ("garbage", "cannot load the model ("),
    ],
)
def test_a_model_that_cannot_be_scored_is_one_line(
    in_project, prepared, params_file, run_module, make, message
):
    import keras

    if make == "garbage":
        write_model_run(in_project, keras.Sequential([keras.Input((32, 32, 3))]))
        (in_project / "models" / "model.keras").write_bytes(b"PK\x03\x04 not a model")
    else:
        units = 10 if make == "nan" else 3
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(units)])  # fmt: skip
        model.set_weights(
            [np.full_like(w, np.nan if make == "nan" else 0) for w in model.get_weights()]
        )
        write_model_run(in_project, model)
    result = run_module(
        "cifar10_mlops.stages.evaluate", "--params", str(params_file()), *stage_args("evaluate"),
        cwd=in_project,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_line(result).startswith(f"error: models/model.keras: {message}")
    assert not (in_project / "reports" / "metrics.json").exists()
