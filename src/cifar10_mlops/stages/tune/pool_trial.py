"""One Hyperband trial, run wherever a work-pool worker picks it up (flows/trial.py).

The search's flow (pool_search.py) keeps the oracle and sends each trial as a spec: the
search's params, the trial's hyperparameters (keras-tuner's config, with Hyperband's
`tuner/*` values), the data's digest, the MLflow run to log into and, for a trial that
continues an earlier one, the MLflow run whose checkpoint it starts from. The trial trains
`tuner/initial_epoch` -> `tuner/epochs` on the search's images, exactly as the in-process
tuner does, logs each epoch to its MLflow run and saves its best epoch's weights there as
`checkpoint/best.weights.h5`, which a later round of Hyperband continues from on any machine.
The run's per-epoch metrics are what the search's oracle is told: nothing else comes back.

Every trial starts from the search's seed, so two trials differ only in their values.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import keras

from cifar10_mlops.core import lineage, metric_names, tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import text_digest
from cifar10_mlops.core.settings import params_from_dict
from cifar10_mlops.core.splits import load_manifest

CHECKPOINT = "checkpoint/best.weights.h5"  # a trial's best epoch, in its MLflow run
SPEC_KEYS = ("search_id", "trial_id", "attempt", "params", "hyperparameters", "data_sha256",
             "run_id", "weights_run_id", "sent_at")  # fmt: skip
SPEC_TYPES = {"search_id": str, "trial_id": str, "attempt": int, "params": dict,
              "hyperparameters": dict, "data_sha256": str, "run_id": str,
              "weights_run_id": (str, type(None)), "sent_at": (int, float)}  # fmt: skip


def check_spec(spec: dict) -> None:
    """A trial spec from a flow run's parameters: every key there, nothing else."""
    if not isinstance(spec, dict):
        raise PipelineError(f"trial spec: expected an object, got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec]
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if missing or unknown:
        raise PipelineError(
            f"trial spec: missing {', '.join(missing) or 'nothing'}; unknown "
            f"{', '.join(unknown) or 'nothing'}"
        )
    wrong = [k for k, kind in SPEC_TYPES.items() if not isinstance(spec[k], kind)]
    if wrong or isinstance(spec["attempt"], bool):
        raise PipelineError(f"trial spec: wrong type of {', '.join(wrong) or 'attempt'}")


def params_digest(params: dict) -> str:
    """The digest of a search's params as a spec carries them; the search's MLflow run has
    it as its tag `search_params_sha256`."""
    return text_digest(json.dumps(params, sort_keys=True))


def check_records(spec: dict, client) -> None:
    """The spec agrees with what the search recorded in MLflow, which a Prefect user who can
    start flow runs cannot change: its MLflow run is this trial's, running, under the
    search's run, with these values; the search's params and data are the spec's; the
    checkpoint it continues from is a finished trial of the same search."""
    import keras_tuner as kt
    from mlflow.exceptions import MlflowException

    def refuse(what: str):
        raise PipelineError(f"trial spec refused: {what}")

    try:
        run = client.get_run(spec["run_id"])
        parent = client.get_run(run.data.tags.get("mlflow.parentRunId", ""))
        weights = client.get_run(spec["weights_run_id"]) if spec["weights_run_id"] else None
    except MlflowException:
        refuse("run_id or weights_run_id is not a run of the MLflow server")
    tags = run.data.tags
    if (run.info.status, tags.get("stage"), tags.get("trial_id")) != (
        "RUNNING",
        "tune-trial",
        spec["trial_id"],
    ):
        refuse(f"run {spec['run_id']} is not trial {spec['trial_id']}'s running MLflow run")
    searched = parent.data.tags
    if (searched.get("search_id"), searched.get("data_sha256")) != (
        spec["search_id"],
        spec["data_sha256"],
    ) or searched.get("search_params_sha256") != params_digest(spec["params"]):
        refuse("its search id, data or params are not those of the search's MLflow run")
    values = kt.HyperParameters.from_config(spec["hyperparameters"]).values
    logged = {k.removeprefix("train."): v for k, v in run.data.params.items()}
    shown = {k: str(v) for k, v in values.items() if not k.startswith("tuner/")}
    if shown != logged or any(tags.get(k) != str(v) for k, v in values.items() if "/" in k):
        refuse("its values are not those the search logged for the trial")
    if weights is not None and (
        weights.info.status != "FINISHED"
        or weights.data.tags.get("mlflow.parentRunId") != parent.info.run_id
        or weights.data.tags.get("trial_id") != values.get("tuner/trial_id")
    ):
        refuse("weights_run_id is not the finished trial this one continues")


def ensure_data(data: Path, digest: str, pull) -> None:
    """`data` holds the search's prepared dataset; `pull()` fetches it (dvc pull) when it is
    missing or another one, once."""
    if _digest(data) != digest:
        pull()
    found = _digest(data)
    if found != digest:
        raise PipelineError(
            f"{data} holds dataset {str(found)[:12]}..., the search's is {digest[:12]}...: "
            "this checkout is not at the search's commit (git pull, then dvc pull prepare)"
        )


def _digest(data: Path) -> str | None:
    try:
        return load_manifest(data)["source_sha256"]
    except (OSError, ValueError, KeyError, PipelineError):
        return None


class EpochLog(keras.callbacks.Callback):
    """Each epoch's metrics into the trial's MLflow run (steps from 1, as training's), and the
    best value of the objective."""

    def __init__(self, run_id: str, objective: str, sent_at: float):
        super().__init__()
        self.run_id, self.objective, self.best = run_id, objective, None
        self.sent_at = sent_at

    def on_train_begin(self, logs=None):
        # what running on a pool costs a trial: the worker's poll, its process, the imports
        waited = max(0.0, time.time() - self.sent_at)  # both clocks: keep machines on NTP
        tracking.log_metrics(self.run_id, {metric_names.TRIAL["wait_s"]: round(waited, 2)})

    def on_epoch_end(self, epoch, logs=None):
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        metrics = lineage.rounded({k: v for k, v in (logs or {}).items() if k in keys})
        tracking.log_metrics(self.run_id, metric_names.epoch(metrics), step=epoch + 1)
        value = metrics.get(self.objective)
        better = max if self.objective == "val_accuracy" else min
        if value is not None:
            self.best = value if self.best is None else better(self.best, value)


def run_trial(spec: dict, data: Path) -> dict:
    """Train the trial `spec` on `data` (prepare's output); returns its run id, best score
    and seconds. Its MLflow run ends FINISHED, or FAILED with the error as a tag."""
    import mlflow

    check_spec(spec)
    client = mlflow.MlflowClient()
    check_records(spec, client)
    run_id = spec["run_id"]
    started = time.perf_counter()
    try:
        score = _train(spec, data, client)
    except BaseException as exc:
        client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:500])
        client.set_terminated(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    seconds = time.perf_counter() - started
    client.log_metric(run_id, metric_names.TRIAL["trial_time_s"], seconds)
    if score is not None:
        client.log_metric(run_id, metric_names.TRIAL["score"], score)
    client.set_tag(run_id, "trial_status", "COMPLETED")
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "score": score, "seconds": round(seconds, 1)}


def _train(spec: dict, data: Path, client) -> float | None:
    import keras_tuner as kt
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    from cifar10_mlops.stages.tune.space import CnnHyperModel
    from cifar10_mlops.stages.tune.trials import prepare_search

    params = params_from_dict(spec["params"])
    tune = params.tune
    search = prepare_search(params, data)  # devices, the seed, the search's images
    hp = kt.HyperParameters.from_config(spec["hyperparameters"])
    model = CnnHyperModel(params.train, tune.space, search.images, tune.max_epochs).build(hp)
    with tempfile.TemporaryDirectory(prefix="trial-") as tmp:
        if spec["weights_run_id"]:
            weights = client.download_artifacts(spec["weights_run_id"], CHECKPOINT, tmp)
            model.load_weights(weights)
        best = Path(tmp) / "best.weights.h5"
        direction = "max" if tune.objective == "val_accuracy" else "min"
        saver = SaveBestEpoch(kt.Objective(tune.objective, direction), str(best))
        epochs = EpochLog(spec["run_id"], tune.objective, float(spec["sent_at"]))
        values = hp.values
        print(
            f"[tune] trial {spec['trial_id']} (attempt {spec['attempt']}) of search "
            f"{spec['search_id']}: epochs {values.get('tuner/initial_epoch', 0)}->"
            f"{values.get('tuner/epochs', tune.max_epochs)}",
            flush=True,
        )
        model.fit(**{
            **search.kwargs, "callbacks": [*search.kwargs["callbacks"], saver, epochs],
            "epochs": values.get("tuner/epochs", tune.max_epochs),
            "initial_epoch": values.get("tuner/initial_epoch", 0), "verbose": 2,
        })  # fmt: skip
        client.log_artifact(spec["run_id"], str(best), Path(CHECKPOINT).parent.as_posix())
    return epochs.best
