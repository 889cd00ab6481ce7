"""Keras Tuner's Hyperband, as the `tune` stage runs it.

`BudgetedHyperbandOracle` starts from a given configuration, never samples one over a cost
budget, and gives the trial of a distributed worker that went silent to another worker.
`TrackedHyperband` records each trial through a SearchLog (runs.py), on one machine or as a
worker of Keras Tuner's distributed mode (a chief process serving the oracle over gRPC,
workers running the trials; see distributed.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import keras_tuner as kt

from cifar10_mlops.core.settings import TrainConfig, TuneConfig
from cifar10_mlops.stages.tune.space import CnnHyperModel, mflops

if TYPE_CHECKING:  # runs.py imports this module
    from cifar10_mlops.stages.tune.runs import SearchLog

# Keras Tuner's own environment variables for its distributed mode.
KT_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


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

    def settled(self) -> bool:
        """Whether the next trial is the one a one-worker search would get, whichever trials
        still run: a retry, a random draw (a bracket's first round, or a new bracket), or a
        round whose previous round has no trial running. Brackets and rounds are walked as
        Hyperband's populate_space walks them. A search that asks only then, or when nothing
        runs, picks the same trials on any number of workers; keras-tuner would otherwise
        fill a free slot from a round's first results, or open a bracket early, so which
        trials run would depend on timing."""
        if self._retry_queue:
            return True
        self._remove_completed_brackets()
        for bracket in self._brackets:
            number, rounds = bracket["bracket_num"], bracket["rounds"]
            if len(rounds[0]) < self._get_size(number, 0):
                return True  # a random draw
            for round_num in range(1, len(rounds)):
                size, past = self._get_size(number, round_num), rounds[round_num - 1]
                if len(rounds[round_num]) >= size:
                    continue
                before = [self.trials[info["id"]] for info in past]
                if any(t.status in ("RUNNING", "IDLE") for t in before):
                    return False  # its pick depends on how they end
                picked = {info["past_id"] for info in rounds[round_num]}
                done = [t for t in before if t.status == "COMPLETED" and t.trial_id not in picked]
                if len(done) > self._get_size(number, round_num - 1) - size:
                    return True  # the best of an ended round
        return True  # a new bracket, or the end

    def may_ask(self, running: bool, ended: bool) -> bool:
        """Whether a search that keeps a one-worker search's trials may ask for one now, with
        trials `running` or not, and the oracle having `ended` (given no trial once): when
        nothing runs or the answer is settled; once ended, only for a lost trial to rerun
        (a one-worker search stops at the oracle's first no)."""
        if ended:
            return bool(self._retry_queue)
        return not running or self.settled()

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


def make_oracle(
    tune: TuneConfig,
    train: TrainConfig,
    *,
    seed: int,
    first: dict | None,
    worker_timeout: float | None = None,
    retries: int = 0,
) -> BudgetedHyperbandOracle:
    """Hyperband over `tune.space`, starting from `first`, within `tune.max_mflops`.

    `worker_timeout`: seconds before a silent gRPC worker's trial goes to another
    (default tune.worker_timeout); `retries`: how many more times a trial ended INVALID (its
    worker lost) runs."""
    objective = kt.Objective(tune.objective, "max" if tune.objective == "val_accuracy" else "min")
    budget = tune.max_mflops
    return BudgetedHyperbandOracle(
        objective=objective,
        max_epochs=tune.max_epochs,
        factor=tune.factor,
        hyperband_iterations=tune.hyperband_iterations,
        seed=seed,
        first=first,
        admissible=None if budget is None else (lambda values: mflops(train, values) <= budget),
        worker_timeout=tune.worker_timeout if worker_timeout is None else worker_timeout,
        max_retries_per_trial=retries,
    )


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
    oracle = make_oracle(tune, train, seed=seed, first=first)
    log.total, log.epochs = oracle.plan()
    return TrackedHyperband(
        CnnHyperModel(train, tune.space, images, tune.max_epochs),
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
