"""Stage `evaluate`: score the trained model on the held-out test split, once.

Reads  models/model.keras, models/run.json (from `train`), reports/train/history.csv,
       data/prepared/test.npz and val.npz, params.yaml `evaluate` and `seed`.
Writes reports/metrics.json (loss, accuracy, weighted and macro F1, per-class precision,
       recall and F1), reports/evaluate/predictions.csv (actual vs predicted, for DVC's
       confusion plot), reports/evaluate/test_predictions.npz (each test image's label and
       class probabilities, and the test split's digest: what `register` compares champion and
       challenger on), reports/evaluate/drift_reference.npz (embeddings, predicted classes
       and confidences of validation images: what `cifar10-mlops drift` compares production
       with, monitoring/reference.py), reports/evaluate/confusion_matrix.png and
       learning_curves.png.
Logs all of it, and the model (serving/pyfunc.py around model.keras), into the training
run's MLflow run, so that one run holds the whole story.
"""

from __future__ import annotations

import csv
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from cifar10_mlops.training import gate
from cifar10_mlops.core import artifacts, lineage, metric_names, tracking
from cifar10_mlops.core.settings import load_params
from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import replacing, require_files, write_json
from cifar10_mlops.core.splits import load_manifest, load_split
from cifar10_mlops.core.stage import run_stage, stage_parser
from cifar10_mlops.monitoring import reference


def check_probabilities(probs: np.ndarray, images: int, model: Path) -> None:
    """One row of ten finite class probabilities per test image, or a one-line error."""
    if probs.shape != (images, len(CLASSES)):
        raise PipelineError(
            f"{model}: predicts shape {probs.shape} for {images} images, expected "
            f"({images}, {len(CLASSES)}): not a CIFAR-10 classifier"
        )
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if bad:
        raise PipelineError(
            f"{model}: predicts NaN or infinite values for {bad} of {images} test images "
            "(its training diverged?); retrain it"
        )


def score(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Test metrics from true labels and predicted class probabilities."""
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    weighted = np.average(f1, weights=support) if support.sum() else 0.0
    return {
        "loss": float(log_loss(y_true, np.clip(probs, 1e-7, 1), labels=labels)),
        "accuracy": float((y_pred == y_true).mean()),
        "f1_weighted": float(weighted),
        "f1_macro": float(f1.mean()),
        "per_class": {
            cls: {"precision": float(p), "recall": float(r), "f1": float(f)}
            for cls, p, r, f in zip(CLASSES, precision, recall, f1)
        },
    }


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> None:
    """Annotated confusion matrix (counts): actual classes in rows, predicted in columns, as
    dvc.yaml's confusion plot draws them."""
    cm = confusion_matrix(y_true, y_pred, labels=range(len(CLASSES)))
    fig = Figure(figsize=(9, 8))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(
        xticks=range(len(CLASSES)),
        yticks=range(len(CLASSES)),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="Predicted class",
        ylabel="Actual class",
        title=f"Confusion matrix (test, accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})",
    )
    ax.tick_params(axis="x", labelrotation=45)
    threshold = cm.max() / 2 if cm.size else 0
    for i, j in np.ndindex(cm.shape):
        ax.text(
            j,
            i,
            str(cm[i, j]),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if cm[i, j] > threshold else "black",
        )
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)


def plot_curves(history: list[dict], path: Path) -> None:
    """The study's two panels: accuracy and loss per epoch, training vs validation."""
    epochs = [int(h["epoch"]) for h in history]  # counted from 1, as history.csv has them
    fig = Figure(figsize=(12, 4))
    for i, metric in enumerate(("accuracy", "loss"), 1):
        ax = fig.add_subplot(1, 2, i)
        ax.plot(epochs, [float(h[metric]) for h in history], label=f"Training {metric}")
        ax.plot(epochs, [float(h[f"val_{metric}"]) for h in history], label=f"Validation {metric}")
        ax.set(title=f"Training and validation {metric}", xlabel="Epoch", ylabel=metric.title())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)


NOTE = "mlflow.note.content"  # where the MLflow UI keeps a description


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def log_to_mlflow(
    run_info: dict, metrics: dict, model_path: Path, files: list[Path], test: tuple, data: Path
) -> str:
    """Add the model, the test split and the test results to the training run; returns the
    model's URI.

    The model is logged as the pyfunc of serving/pyfunc.py around the .keras file, so that it loads
    with mlflow.pyfunc.load_model and serves with `mlflow models serve`, checking its input.
    Its metrics in MLflow are what it scores, and only that: the test metrics (logged against
    it and the test dataset, so `mlflow.search_logged_models` ranks models by them) and the
    training and validation metrics of the epoch whose weights it holds (run.json's `epoch`).
    MLflow's own `log_model(step=)` would also link every other metric of that step, such as
    a system metrics sample.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    tracking.connect(run_info["tracking_uri"])
    client = mlflow.MlflowClient()
    run_id, epoch = run_info["run_id"], int(run_info.get("epoch", 0))
    run = client.get_run(run_id)
    model = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=run.info.experiment_id,
        params=run.data.params, model_type="keras image classifier",
    )  # fmt: skip
    with warnings.catch_warnings():  # "add type hints to predict": pyfunc.py says why not
        warnings.filterwarnings("ignore", message=".*type hints", category=UserWarning)
        info = _log_model(model_path, model.model_id)  # no active run: nothing linked yet
    record_digests(client, model.model_id, files)
    with mlflow.start_run(run_id=run_id):
        client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=epoch)])
        link_epoch(client, run_id, model.model_id, epoch)
        [dataset] = lineage.log_splits({"test": test}, load_manifest(data), data).values()
        mlflow.log_metrics(
            lineage.rounded(metric_names.test(metrics)), step=epoch,
            model_id=model.model_id, dataset=dataset,
        )  # fmt: skip
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        client.set_logged_model_tags(model.model_id, {NOTE: describe_model(run, epoch, metrics)})
        mlflow.set_tag("model_uri", info.model_uri)  # what `register` registers
        mlflow.set_tag("test_sha256", gate.test_digest(*test))
    return info.model_uri


def record_digests(client, model_id: str, files: list[Path]) -> None:
    """Record in the logged model's params (core/artifacts.py) the digest of its artifacts as
    stored (downloaded back) and of the test predictions logged beside it, which whoever
    loads or compares the model checks first."""
    where = artifacts.model_location(client, model_id)
    with tempfile.TemporaryDirectory(prefix="cifar10-logged-") as tmp:
        stored = artifacts.download(where, Path(tmp) / "model", "the logged model")
        digests = {artifacts.MODEL_PARAM: artifacts.tree_sha256(stored)}
    for path in files:
        if path.name == gate.PREDICTIONS:
            digests[artifacts.PREDICTIONS_PARAM] = artifacts.digest(path)
        elif path.name == reference.FILE:
            digests[artifacts.REFERENCE_PARAM] = artifacts.digest(path)
    client.log_model_params(model_id, digests)


def describe_model(run, epoch: int, metrics: dict) -> str:
    """The logged model's description (the MLflow UI's, on the model's page)."""
    weights = run.data.tags.get("weights_sha256", "")[:16]
    return (
        f"The weights of training run {run.info.run_name} after epoch {epoch} (sha256 "
        f"{weights}): test accuracy {metrics['accuracy']:.4f}, weighted F1 "
        f"{metrics['f1_weighted']:.4f} on the 10,000 test images. Takes uint8 RGB images of "
        f"shape (n, 32, 32, 3); the registered model's description says how to load and call it."
    )


def link_epoch(client, run_id: str, model_id: str, epoch: int) -> None:
    """Link the per-epoch training and validation metrics of `epoch` to the logged model, as
    MLflow's `log_model(step=)` does, without the run's other metrics of that step."""
    from mlflow.entities import Metric

    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
        for key in metric_names.EPOCH.values()
        for m in client.get_metric_history(run_id, key)
        if m.step == epoch
    ]
    if linked:
        client.log_batch(run_id, metrics=linked)


def _log_model(model_path: Path, model_id: str):
    import keras
    import mlflow
    import tensorflow as tf

    from cifar10_mlops.serving import pyfunc as serving  # imports MLflow

    return mlflow.pyfunc.log_model(
        name="model",
        model_id=model_id,
        python_model=serving.__file__,
        artifacts={serving.KERAS_ARTIFACT: str(model_path)},
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"keras=={keras.__version__}",
            f"tensorflow=={tf.__version__}",
            f"numpy=={np.__version__}",
        ],
        metadata={"input": "uint8 RGB images, shape (n, 32, 32, 3)", "classes": list(CLASSES)},
    )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, data="prepare's output folder", model="train's model.keras",
        run_info="train's run.json", history="train's history.csv",
        metrics="metrics.json to write", plots="folder for plots and predictions",
        predictions="test_predictions.npz to write (for the promotion gate)",
        reference=f"{reference.FILE} to write (for the drift test)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.evaluate
    require_files(args.model, args.run_info, args.history, hint="run the train stage first")

    import keras

    x, y = load_split(args.data, "test")
    try:
        model = keras.models.load_model(args.model)
    except Exception as exc:  # Keras raises ValueError, OSError, KeyError, ... for a bad file
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{args.model}: cannot load the model ({reason})") from None
    probs = model.predict(x, batch_size=cfg.batch_size, verbose=0)
    check_probabilities(probs, len(y), args.model)
    metrics = score(y, probs)

    with replacing(args.plots / "predictions.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((CLASSES[a], CLASSES[p]) for a, p in zip(y, probs.argmax(axis=1)))
    gate.save_predictions(args.predictions, gate.Predictions(y, probs, gate.test_digest(x, y)))
    val = load_split(args.data, "val")
    drift_reference = reference.build(
        model, *val, cfg.reference_images, params.seed, cfg.batch_size
    )
    reference.save(args.reference, drift_reference)
    plot_confusion(y, probs.argmax(axis=1), args.plots / "confusion_matrix.png")
    plot_curves(read_history(args.history), args.plots / "learning_curves.png")
    write_json(args.metrics, metrics)

    run_info = json.loads(args.run_info.read_text())
    files = [args.metrics, args.predictions, args.reference, args.plots / "confusion_matrix.png"]
    files.append(args.plots / "learning_curves.png")
    log_to_mlflow(run_info, metrics, args.model, files, (x, y), args.data)
    print(
        f"test accuracy {metrics['accuracy']:.4f}, weighted F1 {metrics['f1_weighted']:.4f}, "
        f"macro F1 {metrics['f1_macro']:.4f} -> {args.metrics}; MLflow run {run_info['run_id']}"
    )


if __name__ == "__main__":
    run_stage(main)
