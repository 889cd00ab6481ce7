"""Keras Tuner Hyperband with MLflow tracking, for the `tune` stage.

`CnnHyperModel` builds `train`'s network through train.compile_model, with the trial's values in
place of the searched `train` entries. `BudgetedHyperbandOracle` starts from a given
configuration and never samples one over a cost budget. `TrackedHyperband` logs each trial
as a nested MLflow run and prints progress.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import cache
from pathlib import Path

import keras_tuner as kt

from cifar10_mlops import tracking
from cifar10_mlops.config import (
    FloatRange,
    IntRange,
    OptimizerChoice,
    Params,
    SearchSpace,
    TrainConfig,
    TuneConfig,
)
from cifar10_mlops.model import build_model, forward_mflops
from cifar10_mlops.train import TUNABLE, compile_model

# Keras Tuner's bookkeeping values: MLflow tags of a trial, not hyperparameters.
TUNER_KEYS = (
    "tuner/epochs",
    "tuner/initial_epoch",
    "tuner/bracket",
    "tuner/round",
    "tuner/trial_id",
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
    cfg = replace(cfg, **{k: v for k, v in values.items() if k not in TUNER_KEYS})
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


def make_tuner(
    tune: TuneConfig,
    train: TrainConfig,
    *,
    seed: int,
    first: dict | None,
    log: SearchLog,
    directory: Path,
    project: str,
) -> TrackedHyperband:
    """A tuner over `tune.space` that resumes the search saved in directory/project, if any."""
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
    )
    return TrackedHyperband(
        CnnHyperModel(train, tune.space),
        oracle,
        log=log,
        directory=str(directory),
        project_name=project,
        overwrite=False,
    )


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
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in params.items())
        print(
            f"[tune] trial {len(oracle.trials)} of {self.total} (id {trial.trial_id}, "
            f"epochs {start}->{stop}): {shown} | {self._best(oracle)} | "
            f"elapsed {_duration(time.perf_counter() - self.started)}",
            flush=True,
        )

    def epoch_end(self, trial, epoch: int, logs: dict) -> None:
        metrics = {
            k: float(v)
            for k, v in logs.items()
            if k in ("loss", "accuracy", "val_loss", "val_accuracy")
        }
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


def fmt(value) -> str:
    """A hyperparameter value as people read it: 3 significant digits for floats."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
