"""Stage `tune`: a Keras Tuner Hyperband search over params.yaml `tune.space` (study §4.4).

Reads  data/prepared/{train,val}.npz and manifest.json (from `prepare`); params.yaml `tune`,
       `seed`, `mlflow` and the parts of `train` that define the network (architecture,
       dropout, batch sizes, augment) and the first trial (the searched entries' values).
Writes models/best_hparams.json (the searched values `train` then uses),
       reports/tune/trials.csv (one row per trial), reports/tune/summary.json (metrics),
       reports/tune/trials.png (objective per epoch of every trial: the study's "combos" plot)
       and reports/tune/trials_table.png.
State  --state DIR holds keras-tuner's trials and checkpoints while a search runs: a killed
       search continues from its finished trials when the stage reruns with the same settings.
       The folder is removed once the search completes.
MLflow one parent run per attempt (search space and Hyperband settings as params; the best
       values, the trials table and both images at the end) and a nested run per trial.
Trials are scored on the validation split; the test set is never read here.

Distributed search, with Keras Tuner's own environment variables: the stage run with
KERASTUNER_TUNER_ID=chief, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT serves the oracle and
trains nothing; workers, `python -m cifar10_mlops.tune --worker --data ... --state ...` with a
unique KERASTUNER_TUNER_ID each, run the trials. All share the --state folder (trial
checkpoints, and search.json, which gives workers the chief's params and MLflow run) and one
MLflow tracking server. An empty KERASTUNER_ORACLE_IP means a search in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from cifar10_mlops import devices, tracking
from cifar10_mlops.config import IntRange, Params, flatten, load_params, params_from_dict
from cifar10_mlops.errors import ConfigError, PipelineError
from cifar10_mlops.hyperband import (
    SearchLog,
    fmt,
    in_space,
    kt_chief,
    kt_distributed,
    make_tuner,
    mflops,
    searched,
)
from cifar10_mlops.splits import load_manifest, load_split
from cifar10_mlops.stage import run_stage, seed_everything
from cifar10_mlops.train import TUNABLE, make_dataset
from cifar10_mlops.trials import (
    TRIALS_FIELDS,
    plot_table,
    plot_trials,
    read_curves,
    trial_rows,
    trial_workers,
    write_atomic,
    write_trials_csv,
)

# The `train` keys a search depends on besides the searched ones (see dvc.yaml).
TRAIN_KEYS = (
    "architecture", "dropout", "batch_size", "val_batch_size", "augment", "weight_decay",
    "label_smoothing",
)  # fmt: skip
KT_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
SEARCH_FILE = "search.json"  # what a chief tells its workers, in the search's state folder


def search_id(params: Params, data_sha256: str) -> str:
    """Fingerprint of everything a search's result depends on: a rerun with the same id may
    resume the interrupted search; any other settings start afresh."""
    train = {k: v for k, v in asdict(params.train).items() if k in TRAIN_KEYS + TUNABLE}
    payload = {
        "tune": asdict(params.tune),
        "train": train,
        "seed": params.seed,
        "data": data_sha256,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def subset_per_class(x: np.ndarray, y: np.ndarray, per_class: int | None, seed: int):
    """A seeded, stratified subset of at most `per_class` images of each class."""
    if per_class is None:
        return x, y
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
    )
    return x[keep], y[keep]


def check_space(params: Params) -> dict | None:
    """Errors a search would only meet later, raised before any trial; returns the first
    trial's values (None when the first trial is random)."""
    tune, train = params.tune, params.train
    space = searched(tune.space)
    budget = tune.max_mflops
    if budget is not None:
        # Cost grows with every searched size, so the smallest one is the cheapest.
        cheapest = {k: s.min for k, s in space.items() if isinstance(s, IntRange)}
        cost = mflops(train, cheapest)
        if cost > budget:
            raise ConfigError(
                f"tune.max_mflops: {budget:g} admits no configuration of tune.space "
                f"(the cheapest needs {cost:.1f} MFLOPs per image)"
            )
    if not tune.first_trial_from_train:
        return None
    first = {name: getattr(train, name) for name in space}
    outside = [k for k, spec in space.items() if not in_space(first[k], spec)]
    if outside:
        print(f"[tune] first trial is random: train.{', train.'.join(outside)} outside tune.space")
        return None
    if budget is not None and mflops(train, first) > budget:
        print("[tune] first trial is random: train's network exceeds tune.max_mflops")
        return None
    return first


def write_disabled(best_path: Path, reports: Path) -> None:
    """tune.enabled is false: outputs that say so, and train keeps its own values."""
    write_atomic(best_path, json.dumps({"enabled": False, "hyperparameters": {}}, indent=2) + "\n")
    write_trials_csv([], reports / "trials.csv")
    write_atomic(reports / "summary.json", json.dumps({"trials": 0}, indent=2) + "\n")
    plot_trials([], [], "val_accuracy", reports / "trials.png")
    plot_table([], reports / "trials_table.png")
    print(
        f"tuning disabled (tune.enabled: false); train keeps its params.yaml values -> {best_path}"
    )


def prepare_state(root: Path, project: str) -> bool:
    """Keep only this search's state under `root`; True when there is a search to resume."""
    if root.exists():
        for child in root.iterdir():
            if child.name != project:
                print(f"[tune] discarding {child}: an unfinished search with other settings")
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    return (root / project / "oracle.json").exists()


def log_settings(params: Params, *, seed: int, train_images: int, search: str, resumed: bool):
    """The active MLflow run's params (search space, Hyperband settings, network) and tags."""
    import mlflow

    network = {
        f"train.{k}": v for k, v in flatten(params.train).items() if k.split(".")[0] in TRAIN_KEYS
    }
    mlflow.log_params(
        {
            **flatten(params.tune, "tune."),
            **network,
            "seed": seed,
            "data_train_images": train_images,
        }
    )
    mlflow.set_tags(
        {
            **tracking.process_tags(),
            "stage": "tune",
            "search_id": search,
            "resumed": str(resumed).lower(),
            "git_commit": tracking.git_commit(),
        }
    )


class Search(NamedTuple):
    seed: int
    strategy: object  # for the tuner; None on one device
    kwargs: dict  # tuner.search's arguments
    images: np.ndarray  # the search's training images
    n_val: int  # validation images


def prepare_search(params: Params, data: Path) -> Search:
    """What every process that runs trials sets up, in this order: the devices (before
    TensorFlow starts), the seed, the data."""
    tune, train = params.tune, params.train
    placement = devices.setup(train.precision)
    seed = params.seed if tune.seed is None else tune.seed
    seed_everything(seed)
    x_train, y_train = subset_per_class(*load_split(data, "train"), tune.train_per_class, seed)
    val = load_split(data, "val")
    callbacks = []
    if tune.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=tune.objective, patience=tune.early_stopping_patience
            )
        )
    search = {
        "x": make_dataset(x_train, y_train, train.batch_size, seed=seed, augment=train.augment),
        "validation_data": make_dataset(*val, train.val_batch_size, seed=seed),
        "epochs": tune.max_epochs,
        "callbacks": callbacks,
        "shuffle": False,  # the tf.data pipeline shuffles
        "verbose": 1 if sys.stdout.isatty() else 2,
    }
    strategy = placement.strategy if placement.replicas > 1 else None
    return Search(seed, strategy, search, x_train, len(val[1]))


def run_trials(tuner, log: SearchLog, search: dict) -> None:
    """tuner.search; an interrupted trial's MLflow run ends KILLED."""
    try:
        tuner.search(**search)
    except BaseException:
        log.abort()
        raise


def run_search(params: Params, args: argparse.Namespace) -> None:
    import mlflow

    tune, train = params.tune, params.train
    search = prepare_search(params, args.data)
    seed, n_train = search.seed, len(search.images)
    first = check_space(params)
    manifest = load_manifest(args.data)
    sid = search_id(params, manifest["source_sha256"])
    resuming = prepare_state(args.state, sid)
    state = args.state / sid
    chief = kt_chief()

    uri = tracking.tracking_uri()
    experiment_id = tracking.configure(params.mlflow.experiment, uri)
    tracking.end_orphaned_runs(experiment_id)

    with tracking.start_run(experiment_id=experiment_id, run_name="tune-hyperband") as run:
        log_settings(params, seed=seed, train_images=n_train, search=sid, resumed=resuming)
        mlflow.set_tags({"data_sha256": manifest["source_sha256"], "distributed": str(chief)})
        log = SearchLog(
            state=state, experiment_id=experiment_id, parent_id=run.info.run_id, cfg=params
        )
        tuner = make_tuner(
            tune, train, seed=seed, first=first, log=log, directory=args.state, project=sid,
            images=search.images, strategy=search.strategy,
        )  # fmt: skip
        oracle = tuner.oracle
        state.mkdir(parents=True, exist_ok=True)
        done = sum(t.status == "COMPLETED" for t in oracle.trials.values())
        print(
            f"[tune] Hyperband: {log.total} trials, {log.epochs} epochs in all, on {n_train} "
            f"training images; objective {tune.objective} on {search.n_val} validation images; "
            f"MLflow run {run.info.run_id}"
            + (f"; resuming after {done} finished trials" if resuming else ""),
            flush=True,
        )
        if chief:
            announce(params, args, sid, run.info.run_id, experiment_id, manifest)
        run_trials(tuner, log, search.kwargs)
        end_lost_trials(run.info.run_id)
        finish(params, args, tuner, log, sid, run.info.run_id)
    shutil.rmtree(state, ignore_errors=True)
    if args.state.exists() and not any(args.state.iterdir()):
        args.state.rmdir()


def announce(params, args, sid: str, run_id: str, experiment_id: str, manifest: dict) -> None:
    """Write search.json for the workers and say how to start them."""
    info = {
        "search_id": sid,
        "mlflow_run_id": run_id,
        "experiment_id": experiment_id,
        "data_sha256": manifest["source_sha256"],
        "params": asdict(params),
    }
    write_atomic(args.state / sid / SEARCH_FILE, json.dumps(info, indent=2) + "\n")
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    print(
        f"[tune] chief: serving the oracle on {address}; start workers with a unique "
        "KERASTUNER_TUNER_ID each, KERASTUNER_ORACLE_IP/PORT reaching this address and the "
        f"same MLflow server: python -m cifar10_mlops.tune --worker --data {args.data} "
        f"--state {args.state}",
        flush=True,
    )


def end_lost_trials(parent_id: str) -> None:
    """Mark KILLED the trial runs still RUNNING once the search is over: their worker died,
    and another worker ran the trial again under a new run."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    for child in client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
    ):
        client.set_tag(child.info.run_id, "error", "worker lost: the trial ran again elsewhere")
        client.set_terminated(child.info.run_id, "KILLED")
        print(f"[tune] trial run {child.info.run_id} ended KILLED: its worker was lost")


def wait_for_search(state: Path, served: set[str], timeout: float | None) -> dict:
    """The newest search.json under `state` whose MLflow run this worker has not served."""
    deadline = None if timeout is None else time.monotonic() + timeout
    said = False
    while True:
        found = []
        for path in state.glob(f"*/{SEARCH_FILE}") if state.exists() else ():
            try:
                found.append((path.stat().st_mtime, json.loads(path.read_text()), path))
            except (OSError, ValueError):
                continue  # removed or replaced while reading
        fresh = [f for f in found if f[1]["mlflow_run_id"] not in served]
        if fresh:
            _, info, path = max(fresh, key=lambda f: f[0])
            return {**info, "file": path}
        if deadline is not None and time.monotonic() > deadline:
            raise PipelineError(
                f"no search to join in {state} after {timeout:g}s: start the tune stage with "
                "KERASTUNER_TUNER_ID=chief, sharing this --state folder"
            )
        if not said:
            print(f"[tune] worker: waiting for a chief's {SEARCH_FILE} under {state}", flush=True)
            said = True
        time.sleep(2)


def run_worker(args: argparse.Namespace) -> None:
    """Run trials for the chief's searches: one search, or one after another with --loop."""
    import mlflow

    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    if not kt_distributed() or not os.environ.get("KERASTUNER_ORACLE_PORT") or not tuner_id:
        raise PipelineError(
            "a worker needs KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's "
            "oracle) and KERASTUNER_TUNER_ID (unique per worker)"
        )
    if kt_chief():
        raise PipelineError(
            f"KERASTUNER_TUNER_ID={tuner_id} names the chief; give each worker another id"
        )
    served: set[str] = set()
    manifest = load_manifest(args.data)
    while True:
        info = wait_for_search(args.state, served, args.wait)
        served.add(info["mlflow_run_id"])
        if info["data_sha256"] != manifest["source_sha256"]:
            raise PipelineError(
                f"{args.data} is not the chief's dataset (sha256 {manifest['source_sha256'][:12]}"
                f"... vs {info['data_sha256'][:12]}...): run `dvc repro prepare` first"
            )
        params = params_from_dict(info["params"])
        search = prepare_search(params, args.data)
        uri = tracking.tracking_uri()
        tracking.connect(uri)
        try:
            mlflow.MlflowClient().get_run(info["mlflow_run_id"])
        except mlflow.exceptions.MlflowException:
            raise PipelineError(
                f"the chief's MLflow run {info['mlflow_run_id']} is not in {uri}: point "
                "MLFLOW_TRACKING_URI at the chief's tracking server"
            ) from None
        log = SearchLog(
            state=args.state / info["search_id"],
            experiment_id=info["experiment_id"],
            parent_id=info["mlflow_run_id"],
            cfg=params,
            search_file=info["file"],
        )
        tuner = make_tuner(
            params.tune, params.train, seed=search.seed, first=None, log=log,
            directory=args.state, project=info["search_id"], images=search.images,
            strategy=search.strategy,
        )  # fmt: skip
        print(
            f"[tune] worker {tuner_id}: joined search {info['search_id']} (MLflow run "
            f"{info['mlflow_run_id']}) at {os.environ['KERASTUNER_ORACLE_IP']}:"
            f"{os.environ['KERASTUNER_ORACLE_PORT']}",
            flush=True,
        )
        run_trials(tuner, log, search.kwargs)
        print(
            f"[tune] worker {tuner_id}: search {info['search_id']} is over; ran {log.ran} trials",
            flush=True,
        )
        if not args.loop:
            return


def finish(params: Params, args, tuner, log: SearchLog, sid: str, run_id: str) -> None:
    import mlflow

    tune = params.tune
    oracle = tuner.oracle
    rows = trial_rows(oracle, params.train, log.state)
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise RuntimeError("no trial completed; see the errors of the trial runs in MLflow")
    best = oracle.get_best_trials(1)[0]
    values = {k: best.hyperparameters.values[k] for k in searched(tune.space)}
    curves = read_curves(log.state)
    seconds = sum(r["seconds"] for r in rows if r["seconds"] == r["seconds"])
    summary = {
        f"best_{tune.objective}": round(float(best.score), 4),
        "trials": len(completed),
        "epochs_run": len(curves),
        "search_time_s": round(seconds, 1),
    }
    if kt_chief():
        summary["workers"] = len(set(trial_workers(log.state).values()))
    result = {
        "enabled": True,
        "hyperparameters": values,
        "objective": tune.objective,
        "score": float(best.score),
        "trial": best.trial_id,
        "epochs": best.hyperparameters.values.get("tuner/epochs"),
        "trials": len(completed),
        "search_id": sid,
        "mlflow_run_id": run_id,
    }
    reports = args.reports
    write_trials_csv(rows, reports / "trials.csv")
    write_atomic(reports / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_trials(rows, curves, tune.objective, reports / "trials.png")
    plot_table(rows, reports / "trials_table.png")

    mlflow.log_params({f"best.{k}": v for k, v in values.items()})
    mlflow.log_metrics(summary)
    mlflow.log_table({c: [r[c] for r in rows] for c in TRIALS_FIELDS}, "trials.json")
    for name in ("trials.csv", "trials.png", "trials_table.png"):
        mlflow.log_artifact(str(reports / name))
    write_atomic(args.best, json.dumps(result, indent=2) + "\n")
    mlflow.log_artifact(str(args.best))
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
    print(
        f"best of {len(completed)} trials: {tune.objective} {best.score:.4f} (trial "
        f"{best.trial_id}): {shown} -> {args.best}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="prepare's output folder")
    parser.add_argument("--best", type=Path, help="where to write best_hparams.json")
    parser.add_argument("--reports", type=Path, help="folder for trials.csv etc.")
    parser.add_argument("--state", type=Path, required=True, help="resumable search state folder")
    parser.add_argument(
        "--worker", action="store_true", help="run trials for a distributed search's chief"
    )
    parser.add_argument(
        "--loop", action="store_true", help="worker: join the next search when one ends"
    )
    parser.add_argument(
        "--wait", type=float, help="worker: seconds to wait for a search (default: no limit)"
    )
    args = parser.parse_args(argv)
    for name in KT_ENV:  # an empty value (as docker compose passes an unset one) means unset
        if name in os.environ and not os.environ[name].strip():
            del os.environ[name]
    if args.worker:
        run_worker(args)
        return
    if args.best is None or args.reports is None:
        parser.error("--best and --reports are required, except with --worker")
    if kt_distributed() and not kt_chief():
        raise PipelineError(
            f"KERASTUNER_TUNER_ID={os.environ.get('KERASTUNER_TUNER_ID')} makes this a "
            "worker: run it with --worker, or set KERASTUNER_TUNER_ID=chief for the stage"
        )
    params = load_params(args.params)
    if not params.tune.enabled:
        write_disabled(args.best, args.reports)
        return
    run_search(params, args)


if __name__ == "__main__":
    run_stage(main)
