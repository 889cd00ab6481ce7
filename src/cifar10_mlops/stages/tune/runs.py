"""The MLflow record of a search: a nested run per trial under the search's run, progress
lines, and per-epoch curves appended to the search's state folder (so a resumed search still
reports the trials run before the interruption)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cifar10_mlops.core import lineage, metric_names, tracking
from cifar10_mlops.core.settings import Params
from cifar10_mlops.stages.tune.oracle import BudgetedHyperbandOracle, kt_distributed
from cifar10_mlops.stages.tune.space import TUNER_KEYS, fmt, mflops


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
        """A trial starts in this process: its run (begin_run), kept for its epochs."""
        self.tuner_ids[trial.trial_id] = tuner_id
        self.run_ids[trial.trial_id] = self.begin_run(trial, oracle, tuner_id)
        self.trial_started[trial.trial_id] = time.perf_counter()

    def begin_run(self, trial, oracle: BudgetedHyperbandOracle, tuner_id: str) -> str:
        """A trial's child run of the search's run (its values, cost and tags) and its
        progress line; returns the run's id. A pool search's trial logs its epochs there
        from its worker (pool_search.py)."""
        values = trial.hyperparameters.values
        params = {k: v for k, v in values.items() if k not in TUNER_KEYS}
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
                **tracking.orchestration_tags(),
                **{k: str(values[k]) for k in TUNER_KEYS if k in values},
            },
        )
        # Under training's keys (train.learning_rate), so MLflow's compare view lines trials
        # and trainings up.
        for key, value in params.items():
            self.client.log_param(run.info.run_id, f"train.{key}", value)
        cost = mflops(self.cfg.train, values)
        self.client.log_metric(run.info.run_id, metric_names.TRIAL["mflops"], cost)
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
        return run.info.run_id

    def epoch_end(self, trial, epoch: int, logs: dict) -> None:
        # Keras' `epoch` counts from 0 (from the initial epoch of a continued trial); steps
        # and curves count from 1, as training's do.
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        metrics = lineage.rounded({k: v for k, v in logs.items() if k in keys})
        logged = metric_names.epoch(metrics)
        tracking.log_metrics(self.run_ids[trial.trial_id], logged, step=epoch + 1)
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
            self.client.log_metric(run_id, metric_names.TRIAL["score"], score)
        else:
            self.client.set_tag(run_id, "error", _last_line(trial.message))
        self.client.log_metric(run_id, metric_names.TRIAL["trial_time_s"], seconds)
        self.client.set_tag(run_id, "trial_status", trial.status)
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        result = f"{self.objective} {score:.4f}" if ok else f"{trial.status}"
        return f"[tune] trial {trial.trial_id} done in {_duration(seconds)}: {result}"

    def read_remote(self, run_id: str) -> list[tuple[int, dict]]:
        """A trial run elsewhere (a work-pool search's, pool_search.py): its epochs from its
        MLflow run as (step, Keras-named metrics), also appended to the state's curves and
        seconds, which the reports read, as this process's own trials are."""
        keras_names = {v: k for k, v in metric_names.EPOCH.items()}
        epochs: dict[int, dict] = {}
        for mlflow_name, keras_name in keras_names.items():
            for metric in self.client.get_metric_history(run_id, mlflow_name):
                epochs.setdefault(metric.step, {})[keras_name] = metric.value
        run = self.client.get_run(run_id)
        trial, worker = run.data.tags["trial_id"], run.data.tags.get("worker", "")
        seconds = run.data.metrics.get(metric_names.TRIAL["trial_time_s"], float("nan"))
        self._append("seconds.jsonl", {"trial": trial, "seconds": seconds, "tuner": worker})
        for step in sorted(epochs):
            self._append("curves.jsonl", {"trial": trial, "epoch": step, **epochs[step]})
        return sorted(epochs.items())

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


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
