"""Keras Tuner Hyperband with MLflow tracking, for the `tune` stage.

`CnnHyperModel` builds `train`'s network through train.compile_model, with the trial's values in
place of the searched `train` entries. `BudgetedHyperbandOracle` starts from a given
configuration, never samples one over a cost budget, and gives the trial of a distributed
worker that went silent to another worker. `TrackedHyperband` logs each trial as a nested
MLflow run and prints progress, on one machine or as a worker of Keras Tuner's distributed mode
(a chief process serving the oracle over gRPC, workers running the trials; see tune.py).
"""

from __future__ import annotations

import json
import os
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

    def __init__(self, train_cfg: TrainConfig, space: SearchSpace, images):
        super().__init__(name="cifar10_cnn")
        self.train_cfg = train_cfg
        self.space = space
        self.images = images  # training images, for the `fast` network's whitening layer

    def build(self, hp):
        return compile_model(replace(self.train_cfg, **declare(hp, self.space)), self.images)


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

    In distributed mode a worker that has not been heard from for `worker_timeout` seconds
    (workers report after every epoch, see TrackedHyperband.on_epoch_end) is presumed dead:
    its trial goes back to the queue for the next worker that asks, instead of holding up
    Hyperband's round, and the search no longer waits for it to finish. A worker restarted
    with the same KERASTUNER_TUNER_ID before then resumes its own trial (Keras Tuner's rule).
    """

    MAX_DRAWS = 1000

    def __init__(
        self,
        *args,
        first: dict | None = None,
        admissible=None,
        worker_timeout: float,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.first = first
        self.admissible = admissible
        self.worker_timeout = worker_timeout
        self.last_seen: dict[str, float] = {}  # tuner id -> time.monotonic() of its last call

    @kt.synchronized
    def create_trial(self, tuner_id):
        now = time.monotonic()
        self.last_seen[tuner_id] = now
        self._reclaim(now)
        return super().create_trial(tuner_id)

    @kt.synchronized
    def get_trial(self, trial_id):
        # A worker's per-epoch heartbeat (and Hyperband's lookups of earlier trials).
        for tuner_id, trial in self.ongoing_trials.items():
            if trial.trial_id == trial_id:
                self.last_seen[tuner_id] = time.monotonic()
        return super().get_trial(trial_id)

    def _reclaim(self, now: float) -> None:
        silent = [
            tuner_id
            for tuner_id in self.tuner_ids
            if now - self.last_seen.setdefault(tuner_id, now) > self.worker_timeout
        ]
        for tuner_id in silent:
            self.tuner_ids.discard(tuner_id)
            trial = self.ongoing_trials.pop(tuner_id, None)
            lost = "" if trial is None else f"; trial {trial.trial_id} goes to the next worker"
            print(
                f"[tune] worker {tuner_id} silent for {now - self.last_seen[tuner_id]:.0f}s "
                f"(tune.worker_timeout {self.worker_timeout:g}s): presumed dead{lost}",
                flush=True,
            )
            if trial is not None:
                self._retry_queue.append(trial.trial_id)

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
    images,
    strategy=None,
) -> TrackedHyperband:
    """A tuner over `tune.space` that resumes the search saved in directory/project, if any.

    `images` are the search's training images (the `fast` network fits its whitening layer
    on them); `strategy` (a tf.distribute.Strategy) trains each trial across several
    devices."""
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
        worker_timeout=tune.worker_timeout,
    )
    log.total, log.epochs = oracle.plan()
    return TrackedHyperband(
        CnnHyperModel(train, tune.space, images),
        oracle,
        log=log,
        directory=str(directory),
        project_name=project,
        overwrite=False,
        distribution_strategy=strategy,
    )


class TrackedHyperband(kt.Hyperband):
    """kt.Hyperband with a given oracle that logs every trial as a nested MLflow run and
    prints progress: trial n of N, best so far, elapsed time."""

    def __init__(self, hypermodel, oracle, *, log: SearchLog, **kwargs):
        # kt.Hyperband.__init__ only builds its own oracle; skip it for ours.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.log = log
        self.distributed = kt_distributed()

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.log.trial_begin(trial, self.oracle, self.tuner_id)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self.log.epoch_end(trial, epoch, logs or {})
        if self.distributed:
            self.oracle.get_trial(trial.trial_id)  # the heartbeat the chief's oracle counts

    def on_trial_end(self, trial):
        # Logged before the oracle hears of the end: once the last trial ends, the chief
        # writes the search's results from what the workers logged.
        line = self.log.trial_end(trial)
        super().on_trial_end(trial)
        self.log.report(line, self.oracle)

    def search(self, *fit_args, **fit_kwargs):
        if self.distributed and not kt_chief():
            self.oracle.create_trial = _patient(self.oracle.create_trial)
        super().search(*fit_args, **fit_kwargs)


def kt_distributed() -> bool:
    """Keras Tuner's distributed mode is on (KERASTUNER_ORACLE_IP and friends are set)."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP"))


def kt_chief() -> bool:
    return kt_distributed() and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def _patient(create_trial):
    """Keras Tuner's worker asks again at once while the oracle answers IDLE (a Hyperband
    round waits on other workers' trials); ask once a second instead."""

    def create(tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.IDLE:
            time.sleep(1.0)
        return trial

    return create


class SearchLog:
    """MLflow runs, progress lines and per-epoch curves of one search attempt.

    Curves and trial durations are appended to the state folder, so a resumed search still
    reports the trials run before the interruption.
    """

    def __init__(
        self,
        *,
        state: Path,
        experiment_id: str,
        parent_id: str,
        cfg: Params,
        search_file: Path | None = None,
    ):
        """`search_file`: on a distributed worker, the chief's search.json, re-read at every
        trial so that trials join the run of a chief that restarted."""
        import mlflow

        self.client = mlflow.MlflowClient()
        self.state = state
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.cfg = cfg
        self.objective = cfg.tune.objective
        self.maximize = self.objective == "val_accuracy"
        self.started = time.perf_counter()
        self.run_ids: dict[str, str] = {}
        self.trial_started: dict[str, float] = {}
        self.scores: dict[str, float] = {}  # best objective so far of each running trial
        self.tuner_ids: dict[str, str] = {}
        self.search_file = search_file
        self.total = self.epochs = 0  # trials and epochs of the whole search (make_tuner)
        self.ran = 0  # trials this process ran

    def _append(self, name: str, record: dict) -> None:
        with open(self.state / name, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def trial_begin(self, trial, oracle: BudgetedHyperbandOracle, tuner_id: str) -> None:
        values = trial.hyperparameters.values
        params = {k: v for k, v in values.items() if k not in TUNER_KEYS}
        self.tuner_ids[trial.trial_id] = tuner_id
        self.ran += 1
        if self.search_file is not None and self.search_file.exists():
            self.parent_id = json.loads(self.search_file.read_text())["mlflow_run_id"]
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.trial_id}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "stage": "tune-trial",
                "trial_id": trial.trial_id,
                "tuner_id": tuner_id,
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
        where = f" on {tuner_id}" if kt_distributed() else ""
        print(
            f"[tune] trial {int(trial.trial_id) + 1} of {self.total} (id {trial.trial_id}, "
            f"epochs {start}->{stop}){where}: {shown} | {self._best(oracle)} | "
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
        if self.objective in metrics:
            value, best = metrics[self.objective], self.scores.get(trial.trial_id)
            if best is None or (value > best if self.maximize else value < best):
                self.scores[trial.trial_id] = value
        self._append("curves.jsonl", {"trial": trial.trial_id, "epoch": epoch + 1, **metrics})

    def trial_end(self, trial) -> str:
        """Record a finished trial (before the oracle hears of it); returns its result line,
        which `report` prints once the oracle has scored it."""
        seconds = time.perf_counter() - self.trial_started.pop(trial.trial_id)
        tuner_id = self.tuner_ids.pop(trial.trial_id)
        self._append(
            "seconds.jsonl", {"trial": trial.trial_id, "seconds": seconds, "tuner": tuner_id}
        )
        run_id = self.run_ids.pop(trial.trial_id)
        # The oracle scores a trial by its best epoch; this is the same value, known here
        # before the oracle (on the chief, in distributed mode) has seen the trial end.
        score = self.scores.pop(trial.trial_id, None)
        ok = trial.status == "COMPLETED" and score is not None
        if ok:
            self.client.log_metric(run_id, "score", score)
        else:
            self.client.set_tag(run_id, "error", _last_line(trial.message))
        self.client.log_metric(run_id, "trial_time_s", seconds)
        self.client.set_tag(run_id, "trial_status", trial.status)
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        result = f"{self.objective} {score:.4f}" if ok else f"{trial.status}"
        return f"[tune] trial {trial.trial_id} done in {_duration(seconds)}: {result}"

    def report(self, line: str, oracle) -> None:
        print(f"{line} | {self._best(oracle)}", flush=True)

    def abort(self) -> None:
        """End the nested run of an interrupted trial as KILLED."""
        for run_id in self.run_ids.values():
            self.client.set_terminated(run_id, "KILLED")
        self.run_ids.clear()

    def _best(self, oracle) -> str:
        best = oracle.get_best_trials(1)  # a remote call on a distributed worker
        if not best or best[0].status != "COMPLETED":
            return "best so far: none yet"
        return f"best so far {self.objective} {best[0].score:.4f} (trial {best[0].trial_id})"


def fmt(value) -> str:
    """A hyperparameter value as people read it: 3 significant digits for floats."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
