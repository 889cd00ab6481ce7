"""The names the project's metrics have in MLflow, grouped with `/` so that the MLflow UI
shows each group as a section of its charts.

- `train/…` and `val/…`: per epoch, at steps 1, 2, … (epochs are counted from 1 everywhere:
  Keras' progress lines, history.csv, these steps and the PNG curves); the training's
  summary is `train/seconds`, `train/images_per_s`, `train/epochs`, `val/best_accuracy`
  and `val/best_epoch`.
- `test/…`: the test split's scores, once per model (`test/accuracy`, `test/f1_weighted`),
  and per class in sections of their own (`test/f1/cat`, `test/recall/cat`).
- `trial/…` on a search's trial runs and `search/…` on the search's run.

Runs logged before December 2026 have flat names (`test_accuracy`, `val_accuracy`, epochs
from step 0): docs/mlflow.md maps them.
"""

from __future__ import annotations

# Keras' history keys -> MLflow's names.
EPOCH = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "learning_rate": "train/learning_rate",
}
# The training's summary (train.log_summary's keys) -> MLflow's names.
SUMMARY = {
    "train_time_s": "train/seconds",
    "train_images_per_s": "train/images_per_s",
    "epochs_run": "train/epochs",
    "best_val_accuracy": "val/best_accuracy",
    "best_epoch": "val/best_epoch",
}
# A trial run's own metrics.
TRIAL = {
    "mflops": "trial/mflops",
    "score": "trial/score",
    "trial_time_s": "trial/seconds",
    # a work-pool search's trial: seconds from being sent to its first epoch starting
    "wait_s": "trial/wait_seconds",
}


def epoch(logs: dict) -> dict[str, float]:
    """One epoch's Keras logs under their MLflow names (other keys dropped)."""
    return {EPOCH[k]: float(v) for k, v in logs.items() if k in EPOCH}


def summary(values: dict) -> dict[str, float]:
    return {SUMMARY[k]: float(v) for k, v in values.items()}


def test(metrics: dict) -> dict[str, float]:
    """evaluate.score's result under MLflow's names: `test/<metric>`, and
    `test/<precision|recall|f1>/<class>` for each class."""
    flat = {f"test/{k}": float(v) for k, v in metrics.items() if k != "per_class"}
    for cls, values in metrics.get("per_class", {}).items():
        flat.update({f"test/{name}/{cls}": float(v) for name, v in values.items()})
    return flat


def search(values: dict) -> dict[str, float]:
    """The search's summary (summary.json) and noise check under `search/`."""
    return {f"search/{k}": float(v) for k, v in values.items()}
