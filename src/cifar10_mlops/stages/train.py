"""Stage `train`: fit the CNN on the training split, selecting on the validation split.

Reads  data/prepared/{train,val}.npz and manifest.json (from `prepare`), params.yaml `train`,
       `mlflow` and `seed` (all sections are logged as MLflow params), and models/best_hparams.json
       (from `tune`), whose values replace train's when `train.use_tuned` is true.
Writes models/model.keras (takes raw uint8 images), models/run.json (the MLflow run that
       `evaluate` logs into, and the epoch whose weights were saved) and
       reports/train/history.csv (per-epoch metrics, epochs counted from 1).
One MLflow run per training: params, data checksum and git commit tags, per-epoch
`train/loss`, `train/accuracy`, `val/loss`, `val/accuracy` and `train/learning_rate` at steps
1, 2, … (core/metric_names.py).
Devices: every GPU (MirroredStrategy over several, mixed precision per `train.precision`), else
the CPU; see devices.py. The saved model computes in float32 wherever it trained.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import keras
import tensorflow as tf

from cifar10_mlops.training import devices
from cifar10_mlops.core import lineage, metric_names, tracking
from cifar10_mlops.core.settings import (
    TUNABLE,
    Params,
    TrainConfig,
    flatten,
    load_params,
    replace_checked,
)
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.repo import head_commit
from cifar10_mlops.core.files import replacing, write_json
from cifar10_mlops.training.callbacks import (
    LearningRateLog,
    MlflowEpochLogger,
    StopOnDivergence,
    training_callbacks,
)
from cifar10_mlops.training.network import build_network, compile_model
from cifar10_mlops.training.data import fit_arguments, steps_per_epoch
from cifar10_mlops.training.schedules import scheduled_rate, step_schedule
from cifar10_mlops.training.model import with_tta
from cifar10_mlops.core.splits import load_manifest, load_split
from cifar10_mlops.core.stage import run_stage, seed_everything, stage_parser
from cifar10_mlops.training.weights import save_model, weights_sha256

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def train(
    cfg: TrainConfig,
    train_split,
    val_split,
    *,
    seed: int,
    callbacks: list[keras.callbacks.Callback] = (),
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[keras.Model, list[dict]]:
    """Fit a fresh model under `strategy` (default: the current one); returns it (best
    validation weights when early stopping is on) and one dict of HISTORY_KEYS per epoch,
    its `epoch` counted from 1.
    `cfg.batch_size` is the global batch, split between the strategy's replicas."""
    steps = steps_per_epoch(len(train_split[1]), cfg.batch_size)
    learning_rate = scheduled_rate(cfg, steps)
    if learning_rate is not None:
        callbacks = [LearningRateLog(), *callbacks]
    else:
        learning_rate = cfg.learning_rate
        callbacks = [keras.callbacks.LearningRateScheduler(step_schedule(cfg)), *callbacks]
    with (strategy or tf.distribute.get_strategy()).scope():
        model = compile_model(cfg, train_split[0], learning_rate=learning_rate)
    model.summary(print_fn=lambda line, **_: print(line))
    # Divergence is checked first: no other callback sees a NaN step.
    callbacks = [StopOnDivergence(), *training_callbacks(cfg, cfg.epochs * steps), *callbacks]
    if cfg.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                patience=cfg.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
        )
    fit = model.fit(
        **fit_arguments(
            cfg, train_split, val_split, seed=seed, epochs=cfg.epochs, callbacks=callbacks
        )
    )
    epochs = len(fit.history["loss"])
    history = [
        {"epoch": e + 1, **{k: float(fit.history[k][e]) for k in HISTORY_KEYS}}
        for e in range(epochs)
    ]
    return model, history


def with_tuned(cfg: TrainConfig, path: Path) -> tuple[TrainConfig, dict | None]:
    """`cfg` with the searched values of `tune`'s best_hparams.json, when `cfg.use_tuned`.

    Returns the config and the file's content (None when it was not used).
    """
    if not cfg.use_tuned:
        return cfg, None
    if not path.exists():
        raise PipelineError(
            f"{path} not found: run the tune stage first, or set train.use_tuned: false"
        )
    try:
        tuned = json.loads(path.read_text())
        values = tuned["hyperparameters"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: cannot read the tuned hyperparameters ({exc})") from None
    if not tuned.get("enabled", True):
        return cfg, None
    unknown = sorted(set(values) - set(TUNABLE))
    if unknown:
        raise PipelineError(f"{path}: unknown hyperparameters {', '.join(unknown)}")
    try:  # checked as params.yaml is: the file may have been edited or come from elsewhere
        return replace_checked(cfg, "train", **values), tuned
    except ConfigError as exc:
        raise PipelineError(f"{path}: {exc}") from None


def write_history(history: list[dict], path: Path) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *HISTORY_KEYS])
        writer.writeheader()
        writer.writerows(history)


def portable_copy(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """The trained network as it is saved: Keras' own layers (no fused BatchNormalization),
    float32 compute (weights are float32 under mixed precision already, so nothing is
    rounded), test-time augmentation at `cfg.tta_level`, and no optimizer (nothing to
    deserialise but stock layers). It loads and runs the same on any CPU or GPU, without
    this package."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_network(cfg, portable=True)
        copy.set_weights(model.get_weights())
        return with_tta(copy, cfg.tta_level)
    finally:
        keras.config.set_dtype_policy(previous)


def run_tags(tuned: dict | None, manifest: dict, train_images: int, placement, commit: str) -> dict:
    """A training run's tags: where its values, data, code and devices came from."""
    return {
        **tracking.process_tags(),
        **tracking.orchestration_tags(),
        "stage": "train",
        "hparams_source": "tune" if tuned and tuned["hyperparameters"] else "params",
        **({} if tuned is None else {"tune_run_id": tuned.get("mlflow_run_id")}),
        "git_commit": commit,
        "data_sha256": manifest["source_sha256"],
        "data_source": manifest["source"],
        "data_train_images": train_images,
        **placement.tags(),
    }


def recipe(cfg: TrainConfig) -> str:
    """The network and length in a run name: `fast-64.128.256-11ep`."""
    widths = cfg.widths
    shown = widths[:2] if cfg.architecture == "baseline" else widths  # baseline: two blocks
    return f"{cfg.architecture}-{'.'.join(map(str, shown))}-{cfg.epochs}ep"


def describe(params: Params, tuned: dict | None, manifest: dict, commit: str) -> str:
    """The run's one-line description (MLflow's `mlflow.note.content`): the recipe, the
    learning rates the optimizer used, where the values came from (the searched ones named),
    the data and the commit."""
    cfg = params.train
    if cfg.optimizer == "muon":
        rates = (
            f"muon lr {cfg.muon_learning_rate:g} on the conv filters, sgd lr "
            f"{cfg.learning_rate:g} on the rest"
        )
    else:
        rates = f"{cfg.optimizer} lr {cfg.learning_rate:g}"
    if tuned and tuned["hyperparameters"]:
        searched = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in tuned["hyperparameters"].items())  # fmt: skip
        origin = f"searched by tune: {searched}"
    else:
        origin = "params.yaml values"
    return (
        f"{recipe(cfg)}, {rates}, batch {cfg.batch_size}, seed {params.seed} ({origin}); data "
        f"{manifest['source']} sha256 {manifest['source_sha256'][:12]}; commit "
        f"{lineage.short_commit(commit)}"
    )


def run_training(
    params: Params,
    data: Path,
    *,
    tuned: dict | None,
    placement: devices.Placement,
    model_path: Path,
    history_path: Path,
    run_info_path: Path,
) -> dict:
    """Train `params.train` on `data` under one MLflow run and write the stage's outputs
    (inside the run, so a run that failed to log leaves none); returns the best epoch."""
    import mlflow

    train_split, val_split = load_split(data, "train"), load_split(data, "val")
    manifest = load_manifest(data)
    uri = tracking.tracking_uri()
    experiment_id = tracking.configure(params.mlflow.experiment, uri)
    tracking.end_orphaned_runs(experiment_id)
    commit = head_commit()
    cfg = params.train
    name = lineage.run_name("train", f"{cfg.architecture}-{cfg.epochs}ep")
    with tracking.start_run(
        experiment_id=experiment_id, run_name=name,
        description=describe(params, tuned, manifest, commit), log_system_metrics=True,
    ) as run:  # fmt: skip
        # The values trained with: params.yaml's, with the searched ones replaced when tuned,
        # and the data source that was read (CIFAR10_SOURCE overrides download.source).
        mlflow.log_params({**flatten(params), "download.source": manifest["source"]})
        mlflow.set_tags(run_tags(tuned, manifest, len(train_split[1]), placement, commit))
        lineage.log_splits({"train": train_split, "val": val_split}, manifest, data)
        print(f"MLflow run {run.info.run_id} in {uri}")
        start = time.perf_counter()
        model, history = train(
            params.train, train_split, val_split, seed=params.seed,
            callbacks=[MlflowEpochLogger()], strategy=placement.strategy,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        best = log_summary(history, seconds, len(train_split[1]))
        saved = portable_copy(model, params.train)
        digest = weights_sha256(saved)
        mlflow.set_tag("weights_sha256", digest)  # `cifar10-mlops verify` rebuilds to match it
        save_model(saved, model_path)
        write_history(history, history_path)
        # The epoch whose weights were saved: early stopping restores the best one.
        saved = best["epoch"] if cfg.early_stopping_patience is not None else len(history)
        info = {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}
        write_json(run_info_path, info | {"weights_sha256": digest, "epoch": saved})
    print(
        f"trained {len(history)} epochs in {seconds:.0f}s; best val_accuracy "
        f"{best['val_accuracy']:.4f} at epoch {best['epoch']} -> {model_path} "
        f"(weights sha256 {digest[:16]})"
    )
    return best


def log_summary(history: list[dict], seconds: float, images: int) -> dict:
    """Log the training's time, speed and best epoch to the active MLflow run; returns the
    best epoch's history row."""
    import mlflow

    best = max(history, key=lambda h: h["val_accuracy"])
    summary = {
        "train_time_s": seconds,
        "train_images_per_s": len(history) * images / seconds,
        "epochs_run": len(history),
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
    }
    mlflow.log_metrics(lineage.rounded(metric_names.summary(summary)), step=len(history))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, data="prepare's output folder", model="where to save model.keras",
        run_info="where to write run.json", history="where to write history.csv",
        tuned="tune's best_hparams.json (see train.use_tuned)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg, tuned = with_tuned(params.train, args.tuned)
    if tuned is None:
        print("training with the params.yaml train values")
    elif not tuned["hyperparameters"]:
        print(f"training with the params.yaml train values: the search {tuned.get('reason')}")
    else:
        searched = ", ".join(f"{k}={v}" for k, v in tuned["hyperparameters"].items())
        print(f"training with the tuned values from {args.tuned}: {searched}")
    placement = devices.setup(cfg.precision)
    print(f"training on {placement.describe()}")
    seed_everything(params.seed, deterministic=params.deterministic)
    run_training(
        params.model_copy(update={"train": cfg}), args.data, tuned=tuned, placement=placement,
        model_path=args.model, history_path=args.history, run_info_path=args.run_info,
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
