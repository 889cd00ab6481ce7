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
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from functools import cache
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np

from cifar10_mlops import tracking
from cifar10_mlops.config import (
    FloatRange,
    IntRange,
    OptimizerChoice,
    Params,
    SearchSpace,
    TrainConfig,
    TuneConfig,
    flatten,
    load_params,
)
from cifar10_mlops.errors import ConfigError
from cifar10_mlops.model import build_model, forward_mflops
from cifar10_mlops.splits import load_manifest, load_split
from cifar10_mlops.stage import run_stage, seed_everything
from cifar10_mlops.train import TUNABLE, compile_model, make_dataset

# The `train` keys a search depends on besides the searched ones (see dvc.yaml).
TRAIN_KEYS = ("architecture", "dropout", "batch_size", "val_batch_size", "augment")
# Keras Tuner's bookkeeping values: MLflow tags of a trial, not hyperparameters.
TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")
TRIALS_FIELDS = (
    "trial",
    "status",
    "bracket",
    "round",
    "initial_epoch",
    "epochs",
    *TUNABLE,
    "mflops",
    "seconds",
    "score",
)


def searched(space: SearchSpace) -> dict[str, IntRange | FloatRange | OptimizerChoice]:
    return {name: spec for name in TUNABLE if (spec := getattr(space, name)) is not None}


def declare(hp: kt.HyperParameters, space: SearchSpace) -> dict:
    """Register the search space with keras-tuner; returns this trial's values."""
    values = {}
    for name, spec in searched(space).items():
        if isinstance(spec, IntRange):
            values[name] = hp.Int(name, spec.min, spec.max, step=spec.step)
        elif isinstance(spec, FloatRange):
            values[name] = hp.Float(name, spec.min, spec.max, sampling=spec.sampling)
        else:
            values[name] = hp.Choice(name, spec.values)
    return values


def in_space(value, spec) -> bool:
    if isinstance(spec, IntRange):
        return spec.min <= value <= spec.max and (value - spec.min) % spec.step == 0
    if isinstance(spec, FloatRange):
        return spec.min <= value <= spec.max
    return value in spec.values


class CnnHyperModel(kt.HyperModel):
    """`train`'s network and optimizer with the searched entries taken from the trial."""

    def __init__(self, train_cfg: TrainConfig, space: SearchSpace):
        super().__init__(name="cifar10_cnn")
        self.train_cfg = train_cfg
        self.space = space

    def build(self, hp):
        return compile_model(replace(self.train_cfg, **declare(hp, self.space)))


@cache
def _mflops(architecture: str, conv_1: int, conv_2: int, dense: int, dropout: float) -> float:
    model = build_model(
        architecture,
        conv_1_filters=conv_1,
        conv_2_filters=conv_2,
        dense_units=dense,
        dropout=dropout,
    )
    return forward_mflops(model)


def mflops(cfg: TrainConfig, values: dict) -> float:
    """Forward MFLOPs per image of `cfg`'s network with a trial's values."""
    cfg = replace(cfg, **{k: v for k, v in values.items() if not k.startswith("tuner/")})
    return _mflops(
        cfg.architecture, cfg.conv_1_filters, cfg.conv_2_filters, cfg.dense_units, cfg.dropout
    )


class BudgetedHyperbandOracle(kt.oracles.HyperbandOracle):
    """Hyperband that starts from a given configuration and never samples one over a budget.

    `first` (a dict of values) becomes the first trial, so the search has to beat it to win.
    `admissible(values)` filters random draws: configurations it rejects are never trained.
    """

    MAX_DRAWS = 1000

    def __init__(self, *args, first: dict | None = None, admissible=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.first = first
        self.admissible = admissible

    def _random_values(self):
        if self.first is not None and not self._duplicate(self.first):
            return dict(self.first)
        for _ in range(self.MAX_DRAWS):
            values = super()._random_values()
            if values is None or self.admissible is None or self.admissible(values):
                return values
        return None

    def plan(self) -> tuple[int, int]:
        """(trials, epochs) a full search runs: the sizes of every bracket and round."""
        trials = epochs = 0
        for bracket in range(self._get_num_brackets()):
            done = 0
            for round_num in range(self._get_num_rounds(bracket)):
                size = self._get_size(bracket, round_num)
                until = self._get_epochs(bracket, round_num)
                trials += size
                epochs += size * (until - done)
                done = until
        return trials * self.hyperband_iterations, epochs * self.hyperband_iterations


class TrackedHyperband(kt.Hyperband):
    """kt.Hyperband with a given oracle that logs every trial as a nested MLflow run and
    prints progress: trial n of N, best so far, elapsed time."""

    def __init__(self, hypermodel, oracle, *, log: SearchLog, **kwargs):
        # kt.Hyperband.__init__ only builds its own oracle; skip it for ours.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.log = log

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.log.trial_begin(trial, self.oracle)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self.log.epoch_end(trial, epoch, logs or {})

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.log.trial_end(trial, self.oracle)


class SearchLog:
    """MLflow runs, progress lines and per-epoch curves of one search attempt.

    Curves and trial durations are appended to the state folder, so a resumed search still
    reports the trials run before the interruption.
    """

    def __init__(self, *, state: Path, experiment_id: str, parent_id: str, cfg: Params):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.state = state
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.cfg = cfg
        self.objective = cfg.tune.objective
        self.started = time.perf_counter()
        self.run_ids: dict[str, str] = {}
        self.trial_started: dict[str, float] = {}
        self.total = 0

    def _append(self, name: str, record: dict) -> None:
        with open(self.state / name, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def trial_begin(self, trial, oracle: BudgetedHyperbandOracle) -> None:
        values = trial.hyperparameters.values
        params = {k: v for k, v in values.items() if k not in TUNER_KEYS}
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.trial_id}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "stage": "tune-trial",
                "trial_id": trial.trial_id,
                **tracking.process_tags(),
                **{k: str(values[k]) for k in TUNER_KEYS if k in values},
            },
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        cost = mflops(self.cfg.train, values)
        self.client.log_metric(run.info.run_id, "mflops", cost)
        self.trial_started[trial.trial_id] = time.perf_counter()
        self._append("curves.jsonl", {"trial": trial.trial_id, "begin": True})
        start, stop = values.get("tuner/initial_epoch", 0), values.get("tuner/epochs", "?")
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        print(
            f"[tune] trial {len(oracle.trials)} of {self.total} (id {trial.trial_id}, "
            f"epochs {start}->{stop}): {shown} | {self._best(oracle)} | "
            f"elapsed {_duration(time.perf_counter() - self.started)}",
            flush=True,
        )

    def epoch_end(self, trial, epoch: int, logs: dict) -> None:
        metrics = {k: float(v) for k, v in logs.items() if k in ("loss", "accuracy", "val_loss",
                                                                 "val_accuracy")}
        run_id = self.run_ids[trial.trial_id]
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value, step=epoch)
        self._append("curves.jsonl", {"trial": trial.trial_id, "epoch": epoch + 1, **metrics})

    def trial_end(self, trial, oracle: BudgetedHyperbandOracle) -> None:
        seconds = time.perf_counter() - self.trial_started.pop(trial.trial_id)
        self._append("seconds.jsonl", {"trial": trial.trial_id, "seconds": seconds})
        run_id = self.run_ids.pop(trial.trial_id)
        ok = trial.status == "COMPLETED"
        if ok:
            self.client.log_metric(run_id, "score", float(trial.score))
        else:
            self.client.set_tag(run_id, "error", _last_line(trial.message))
        self.client.log_metric(run_id, "trial_time_s", seconds)
        self.client.set_tag(run_id, "trial_status", trial.status)
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        result = f"{self.objective} {trial.score:.4f}" if ok else f"{trial.status}"
        print(
            f"[tune] trial {trial.trial_id} done in {_duration(seconds)}: {result} | "
            f"{self._best(oracle)}",
            flush=True,
        )

    def abort(self) -> None:
        """End the nested run of an interrupted trial as KILLED."""
        for run_id in self.run_ids.values():
            self.client.set_terminated(run_id, "KILLED")
        self.run_ids.clear()

    def _best(self, oracle) -> str:
        done = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
        if not done:
            return "best so far: none yet"
        best = oracle.get_best_trials(1)[0]
        return f"best so far {self.objective} {best.score:.4f} (trial {best.trial_id})"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


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


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_curves(state: Path) -> list[dict]:
    """Per-epoch metrics of every trial; a trial rerun after an interruption keeps only the
    epochs of its last run."""
    curves: dict[str, list[dict]] = {}
    for record in _read_jsonl(state / "curves.jsonl"):
        if record.get("begin"):
            curves[record["trial"]] = []
        else:
            curves.setdefault(record["trial"], []).append(record)
    return [record for trial in sorted(curves) for record in curves[trial]]


def trial_rows(oracle, cfg: TrainConfig, state: Path) -> list[dict]:
    seconds: dict[str, float] = {}
    for record in _read_jsonl(state / "seconds.jsonl"):
        seconds[record["trial"]] = record["seconds"]  # a rerun trial keeps its last duration
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        rows.append(
            {
                "trial": trial_id,
                "status": trial.status,
                "bracket": values.get("tuner/bracket"),
                "round": values.get("tuner/round"),
                "initial_epoch": values.get("tuner/initial_epoch"),
                "epochs": values.get("tuner/epochs"),
                **{k: values.get(k, getattr(cfg, k)) for k in TUNABLE},
                "mflops": round(mflops(cfg, values), 2),
                "seconds": round(seconds.get(trial_id, float("nan")), 1),
                "score": None if trial.score is None else round(float(trial.score), 4),
            }
        )
    return rows


def write_trials_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIALS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_trials(rows: list[dict], curves: list[dict], objective: str, path: Path) -> None:
    """The study's "combos" figure: the objective per epoch of every trial, best in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r["score"] is not None]
    best = (max if objective == "val_accuracy" else min)(
        scored, key=lambda r: r["score"], default=None
    )
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        points = sorted((c["epoch"], c[objective]) for c in curves if c["trial"] == row["trial"])
        if not points:
            continue
        label = (
            f"{row['trial']}: {row['conv_1_filters']}/{row['conv_2_filters']}/"
            f"{row['dense_units']} {row['optimizer']} lr {row['learning_rate']:.1e}"
        )
        is_best = best is not None and row["trial"] == best["trial"]
        ax.plot(*zip(*points), marker="o", ms=3, lw=2.5 if is_best else 1,
                label=label + (" (best)" if is_best else ""), zorder=3 if is_best else 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective)
    ax.set_title(f"Hyperband trials: {objective} per epoch (filters/filters/dense)")
    ax.grid(alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
    elif len(rows) <= 30:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save_figure(fig, path)


def plot_table(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["trial", "status", "epochs", *TUNABLE, "mflops", "seconds", "score"]
    cells = [[_fmt(row[c]) if row[c] is not None else "" for c in columns] for row in rows]
    fig, ax = plt.subplots(figsize=(12, 0.6 + 0.25 * (len(rows) + 1)))
    ax.axis("off")
    table = ax.table(cellText=cells or [[""] * len(columns)], colLabels=columns, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_disabled(best_path: Path, reports: Path) -> None:
    """tune.enabled is false: outputs that say so, and train keeps its own values."""
    write_atomic(best_path, json.dumps({"enabled": False, "hyperparameters": {}}, indent=2) + "\n")
    write_trials_csv([], reports / "trials.csv")
    write_atomic(reports / "summary.json", json.dumps({"trials": 0}, indent=2) + "\n")
    plot_trials([], [], "val_accuracy", reports / "trials.png")
    plot_table([], reports / "trials_table.png")
    print(f"tuning disabled (tune.enabled: false); train keeps its params.yaml values -> {best_path}")


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


def run_search(params: Params, args: argparse.Namespace) -> None:
    import mlflow

    tune, train = params.tune, params.train
    first = check_space(params)
    seed = params.seed if tune.seed is None else tune.seed
    seed_everything(seed)
    manifest = load_manifest(args.data)
    x_train, y_train = subset_per_class(*load_split(args.data, "train"), tune.train_per_class, seed)
    val = load_split(args.data, "val")
    sid = search_id(params, manifest["source_sha256"])
    resuming = prepare_state(args.state, sid)
    state = args.state / sid

    uri = tracking.tracking_uri()
    experiment_id = tracking.configure(params.mlflow.experiment, uri)
    tracking.end_orphaned_runs(experiment_id)

    objective = kt.Objective(tune.objective, "max" if tune.objective == "val_accuracy" else "min")
    budget = tune.max_mflops
    oracle = BudgetedHyperbandOracle(
        objective=objective,
        max_epochs=tune.max_epochs,
        factor=tune.factor,
        hyperband_iterations=tune.hyperband_iterations,
        seed=seed,
        first=first,
        admissible=None if budget is None else (lambda values: mflops(train, values) <= budget),
        max_consecutive_failed_trials=3,
    )
    with tracking.start_run(experiment_id=experiment_id, run_name="tune-hyperband") as run:
        mlflow.log_params(
            {
                **flatten(tune, "tune."),
                **{f"train.{k}": v for k, v in flatten(train).items()
                   if k.split(".")[0] in TRAIN_KEYS},
                "seed": seed,
                "data_train_images": len(y_train),
            }
        )
        mlflow.set_tags(
            {
                **tracking.process_tags(),
                "stage": "tune",
                "search_id": sid,
                "resumed": str(resuming).lower(),
                "git_commit": tracking.git_commit(),
                "data_sha256": manifest["source_sha256"],
            }
        )
        log = SearchLog(
            state=state, experiment_id=experiment_id, parent_id=run.info.run_id, cfg=params
        )
        tuner = TrackedHyperband(
            CnnHyperModel(train, tune.space),
            oracle,
            log=log,
            directory=str(args.state),
            project_name=sid,
            overwrite=False,
        )
        state.mkdir(parents=True, exist_ok=True)
        log.total, epochs = oracle.plan()
        done = sum(t.status == "COMPLETED" for t in oracle.trials.values())
        print(
            f"[tune] Hyperband: {log.total} trials, {epochs} epochs in all, on {len(y_train)} "
            f"training images; objective {tune.objective} on {len(val[1])} validation images; "
            f"MLflow run {run.info.run_id}"
            + (f"; resuming after {done} finished trials" if resuming else ""),
            flush=True,
        )
        callbacks = []
        if tune.early_stopping_patience is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=tune.objective, patience=tune.early_stopping_patience
                )
            )
        try:
            tuner.search(
                make_dataset(x_train, y_train, train.batch_size, seed=seed, augment=train.augment),
                validation_data=make_dataset(*val, train.val_batch_size, seed=seed),
                epochs=tune.max_epochs,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=1 if sys.stdout.isatty() else 2,
            )
        except BaseException:
            log.abort()
            raise
        finish(params, args, tuner, log, sid, run.info.run_id)
    shutil.rmtree(state)
    if not any(args.state.iterdir()):
        args.state.rmdir()


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
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    print(
        f"best of {len(completed)} trials: {tune.objective} {best.score:.4f} (trial "
        f"{best.trial_id}): {shown} -> {args.best}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="prepare's output folder")
    parser.add_argument("--best", type=Path, required=True, help="where to write best_hparams.json")
    parser.add_argument("--reports", type=Path, required=True, help="folder for trials.csv etc.")
    parser.add_argument("--state", type=Path, required=True, help="resumable search state folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not params.tune.enabled:
        write_disabled(args.best, args.reports)
        return
    run_search(params, args)


if __name__ == "__main__":
    run_stage(main)
