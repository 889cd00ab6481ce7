"""tracking: the same short training with and without MLflow logging (a run, its params,
per-epoch metrics, into a throwaway sqlite store), alternated; the ratio of the medians.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path


def tracking(data, params, *, images: int, repeats: int, epochs: int = 2) -> dict:
    """Wall time of the same short training with and without MLflow logging."""
    import mlflow

    from cifar10_mlops.core.settings import flatten
    from cifar10_mlops.stages.train import train
    from cifar10_mlops.training.callbacks import MlflowEpochLogger

    (x, y), val = data[0], data[1]
    cfg = params.train.model_copy(update={"epochs": epochs, "early_stopping_patience": None})
    split = (x[:images], y[:images])
    val = (val[0][:1000], val[1][:1000])
    store = tempfile.mkdtemp(prefix="bench-mlflow-")  # removed at the end
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    experiment = mlflow.create_experiment("bench", artifact_location=Path(store).as_uri())

    def plain():
        train(cfg, split, val, seed=params.seed)

    def tracked():
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_params(flatten(params))
            train(cfg, split, val, seed=params.seed, callbacks=[MlflowEpochLogger()])

    plain()  # warm-up: graph tracing, caches
    times = {"without": [], "with": []}
    for _ in range(repeats):
        for name, fn in (("without", plain), ("with", tracked)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    shutil.rmtree(store, ignore_errors=True)
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    return {
        "seconds_without": round(without, 2),
        "seconds_with": round(with_, 2),
        "overhead": round(with_ / without - 1, 4),
        "runs": repeats,
        "images": images,
        "epochs": epochs,
    }
