"""The search with its trials sent out: Hyperband's oracle here, each trial run by a launcher.

flows/search.py gives it a launcher that starts each trial as a flow run of the trial
deployment on a Prefect work pool (flows/trial.py, pool_trial.py), so N workers on N machines
run N trials at once. The oracle is keras-tuner's (oracle.BudgetedHyperbandOracle, the same
brackets as the `tune` stage), asked for a trial whenever one of `parallel` slots is free and
its answer cannot depend on which running trial ends first (BudgetedHyperbandOracle.settled):
a seeded search runs the same trials, and finds the same best values, on any number of
workers. Slots wait while a round's last trials run, where keras-tuner would fill them.

Records: the search's MLflow run is the parent; each attempt at a trial is a child run,
created here before the trial is sent, so a trial whose worker never reports still has one.
A trial whose flow run CRASHED (its worker lost: the heartbeat automation of flows/deploy.py)
or was cancelled ends KILLED in MLflow, tagged with why, and runs again as a new attempt
(keras-tuner's INVALID status and retry queue), up to `retries` more times. One that FAILED
(its code raised) is a failed trial, as in the stage.

State: keras-tuner's oracle files, plus pool.json (the parent MLflow run, every attempt's
flow run and MLflow run, and which run holds each trial's checkpoint), under
`state_root/<search id>`. A search rerun with the same settings resumes from it: trials
that finished meanwhile count, the others' flow runs are cancelled and they run again.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import keras_tuner as kt
from keras_tuner.src.engine.metrics_tracking import MetricsTracker

from cifar10_mlops.core import lineage, tracking
from cifar10_mlops.core.files import write_json
from cifar10_mlops.core.settings import Params
from cifar10_mlops.core.splits import load_manifest
from cifar10_mlops.stages.tune.launcher import LOST, PENDING_TIMEOUT, WAITING, Launcher, Watch
from cifar10_mlops.stages.tune.oracle import make_oracle
from cifar10_mlops.stages.tune.pool_trial import params_digest
from cifar10_mlops.stages.tune.report import trial_workers
from cifar10_mlops.stages.tune.runs import SearchLog
from cifar10_mlops.stages.tune.search import (
    announce_search, check_space, finish, log_settings, prepare_state, run_label, search_id,
)  # fmt: skip
from cifar10_mlops.stages.tune.space import declare
from cifar10_mlops.stages.tune.trials import prepare_search

STATE_FILE = "pool.json"


class PoolSearch:
    """One search: its oracle, its records and the trials running now."""

    def __init__(self, params: Params, *, data: Path, state_root: Path, launcher: Launcher,
                 parallel: int, retries: int, poll: float,
                 pending_timeout: float = PENDING_TIMEOUT):  # fmt: skip
        self.params, self.data, self.launcher = params, data, launcher
        self.parallel, self.retries, self.poll = parallel, retries, poll
        self.watch = Watch(launcher, pending_timeout)
        self.search = prepare_search(params, data)
        self.first = check_space(params)
        self.manifest = load_manifest(data)
        self.sid = search_id(params, self.manifest["source_sha256"])
        self.state_root, self.state = state_root, state_root / self.sid
        pool_file = self.state / STATE_FILE
        self.resuming = prepare_state(state_root, self.sid) and pool_file.exists()
        if not self.resuming:
            shutil.rmtree(self.state, ignore_errors=True)  # nothing a search could resume
        self.oracle = make_oracle(
            params.tune, params.train, seed=self.search.seed, first=self.first,
            worker_timeout=float("inf"), retries=retries,
        )  # fmt: skip
        self.oracle._set_project_dir(str(state_root), self.sid)
        space = kt.HyperParameters()  # what a Tuner registers by building its hypermodel once
        declare(space, params.tune.space)
        self.oracle.update_space(space)
        # attempts: trial id -> [{attempt, run_id, flow_run_id, outcome}]; weights: trial id
        # -> the MLflow run holding its checkpoint
        self.record = json.loads(pool_file.read_text()) if self.resuming else {}
        self.record.setdefault("attempts", {})
        self.record.setdefault("weights", {})
        self.spec_params = params.model_dump(mode="json")
        self.running: dict[str, tuple] = {}  # slot -> (trial, attempt record)

    def save(self) -> None:
        write_json(self.state / STATE_FILE, self.record)

    def run(self, best_path: Path, reports: Path) -> dict:
        """Run the search to its end; write best_hparams.json and the reports (as the stage
        does); returns best_hparams.json's content."""
        experiment_id = tracking.configure(self.params.mlflow.experiment, tracking.tracking_uri())
        tracking.end_orphaned_runs(experiment_id)
        name, description = run_label(self.params, len(self.search.images), self.manifest["source"])
        parent = self.record.get("mlflow_run_id")
        opened = {"run_id": parent} if parent else {
            "experiment_id": experiment_id, "run_name": name, "description": description,
        }  # fmt: skip
        with tracking.start_run(**opened, log_system_metrics=True) as run:
            self.log = SearchLog(state=self.state, experiment_id=experiment_id,
                                 parent_id=run.info.run_id, cfg=self.params)  # fmt: skip
            self.log.total, self.log.epochs = self.oracle.plan()
            if parent is None:
                self._log_settings(run.info.run_id, experiment_id)
            else:
                self.oracle.reload()  # unfinished trials go to the retry queue
                self._resume()
            announce_search(self.params, SimpleNamespace(oracle=self.oracle), self.log,
                            self.search, run.info.run_id, self.resuming)  # fmt: skip
            try:
                self._drive()
            except BaseException:
                self._stop_running()
                raise
            rerun = sum(len(a) - 1 for a in self.record["attempts"].values())
            best = finish(self.params, SimpleNamespace(oracle=self.oracle), self.log, self.sid,
                          run.info.run_id, best_path, reports, self.search,
                          extra={"workers": len(set(trial_workers(self.state).values())),
                                 "rerun_attempts": rerun})  # fmt: skip
        shutil.rmtree(self.state, ignore_errors=True)
        if self.state_root.exists() and not any(self.state_root.iterdir()):
            self.state_root.rmdir()
        return best

    def _log_settings(self, run_id: str, experiment_id: str) -> None:
        import mlflow

        search, manifest = self.search, self.manifest
        log_settings(self.params, seed=search.seed, train_images=len(search.images),
                     search=self.sid, resumed=False)  # fmt: skip
        mlflow.set_tags({"data_sha256": manifest["source_sha256"], "distributed": "work-pool",
                         "parallel_trials": str(self.parallel),
                         "search_params_sha256": params_digest(self.spec_params)})  # fmt: skip
        subset = self.params.tune.train_per_class
        lineage.log_splits({"train": (search.images, search.labels)}, manifest, self.data,
                           suffix="" if subset is None else f"-{subset}-per-class")  # fmt: skip
        lineage.log_splits({"val": search.val}, manifest, self.data)
        self.state.mkdir(parents=True, exist_ok=True)
        self.record.update(mlflow_run_id=run_id, experiment_id=experiment_id)
        self.save()

    def _resume(self) -> None:
        """After a restart: settle the attempts that finished meanwhile, stop the others (their
        trials run again). keras-tuner's reload queues every trial saved as ongoing, some twice
        and some already ended: the queue keeps each unfinished trial once."""
        oracle = self.oracle
        ended = {"COMPLETED", "FAILED"}
        queue = [t for t in oracle._retry_queue if oracle.trials[t].status not in ended]
        oracle._retry_queue = list(dict.fromkeys(queue))
        for trial_id, attempts in self.record["attempts"].items():
            for attempt in attempts:
                if attempt["outcome"] != "running":
                    continue
                kind, message = (
                    self.watch.state(attempt["flow_run_id"]) if attempt["flow_run_id"] else ("", "")
                )
                if kind == "COMPLETED" and oracle.trials[trial_id].status == "COMPLETED":
                    attempt["outcome"] = "completed"  # settled just before the restart
                    self.record["weights"][trial_id] = attempt["run_id"]
                    continue
                if kind == "COMPLETED":
                    if trial_id in oracle._retry_queue:
                        oracle._retry_queue.remove(trial_id)
                    self._settle(oracle.trials[trial_id], attempt, kind, message)
                    continue
                if attempt["flow_run_id"]:
                    self.launcher.cancel(attempt["flow_run_id"])
                self._end_attempt(attempt, "KILLED", "the search restarted: it runs again", "lost")
        self.save()

    def _stop_running(self) -> None:
        """The search stops: stop its trials' flow runs and end their MLflow runs, as far as
        the servers answer, and keep the record for a resume."""
        for _, attempt in self.running.values():
            for step in (
                partial(self.launcher.cancel, attempt["flow_run_id"]),
                partial(self._end_attempt, attempt, "KILLED", "the search stopped", "lost"),
            ):
                try:
                    step()
                except Exception as exc:  # the server that failed the search, likely
                    print(f"[tune] stopping trial run {attempt['run_id']}: {exc}", flush=True)
        self.save()

    def _drive(self) -> None:
        """Send trials while slots are free, as a one-worker search would get them: ask only
        when nothing runs or the answer cannot depend on which running trial ends first
        (BudgetedHyperbandOracle.settled). Once the oracle gives none (the end, or no
        admissible draw left), a one-worker search would stop there: only lost trials run
        again, and the search ends when the rest have."""
        slots = [f"slot-{i}" for i in range(self.parallel)]
        ended = False
        while True:
            for slot in slots:
                if slot in self.running or not self.oracle.may_ask(bool(self.running), ended):
                    continue
                trial = self.oracle.create_trial(slot)
                if trial.status == "RUNNING":
                    self._start(slot, trial)
                else:
                    ended = True
            if not self.running:
                return
            time.sleep(self.poll)
            for slot, (trial, attempt) in list(self.running.items()):
                kind, message = self.watch.state(attempt["flow_run_id"])
                if kind not in WAITING:
                    del self.running[slot]
                    self._settle(trial, attempt, kind, message)

    def _start(self, slot: str, trial) -> None:
        attempts = self.record["attempts"].get(trial.trial_id, [])
        values = trial.hyperparameters.values
        continues = values.get("tuner/trial_id")
        if continues and continues not in self.record["weights"]:
            raise RuntimeError(
                f"trial {trial.trial_id} continues trial {continues}, whose checkpoint no "
                f"finished attempt recorded in {self.state / STATE_FILE}"
            )
        run_id = self.log.begin_run(trial, self.oracle, slot)  # the child run, progress line
        attempt = {"attempt": len(attempts) + 1, "run_id": run_id, "flow_run_id": None,
                   "outcome": "running"}  # fmt: skip
        self.record["attempts"][trial.trial_id] = [*attempts, attempt]
        self.save()  # before it is sent: a restart then knows of it
        spec = {
            "search_id": self.sid, "trial_id": trial.trial_id, "attempt": attempt["attempt"],
            "params": self.spec_params, "hyperparameters": trial.hyperparameters.get_config(),
            "data_sha256": self.manifest["source_sha256"], "run_id": run_id,
            "weights_run_id": self.record["weights"].get(continues), "sent_at": time.time(),
        }  # fmt: skip
        try:
            attempt["flow_run_id"] = self.launcher.submit(spec)
        except BaseException:
            self._end_attempt(attempt, "KILLED", "never sent: the search stopped", "lost")
            self.save()
            raise
        for key, value in {
            "attempt": attempt["attempt"],
            "prefect_flow_run_id": attempt["flow_run_id"],
        }.items():
            self.log.client.set_tag(run_id, key, str(value))
        self.running[slot] = (trial, attempt)
        self.save()

    def _settle(self, trial, attempt: dict, kind: str, message: str) -> None:
        """Tell the oracle how a trial's flow run ended."""
        if kind == "COMPLETED":
            history = self.log.read_remote(attempt["run_id"])
            objective = self.params.tune.objective
            trial.metrics = MetricsTracker()  # this attempt's epochs only, not an average
            for step, metrics in history:
                if objective in metrics:
                    self.oracle.update_trial(trial.trial_id, {objective: metrics[objective]},
                                             step=step - 1)  # fmt: skip
            trial.status = "COMPLETED" if any(objective in m for _, m in history) else "FAILED"
            trial.message = None if trial.status == "COMPLETED" else f"no {objective} logged"
            self.record["weights"][trial.trial_id] = attempt["run_id"]
            attempt["outcome"] = "completed"
        elif kind in LOST:
            trial.status, trial.message = "INVALID", f"flow run {kind}: {message}"
            self._end_attempt(attempt, "KILLED", f"worker lost ({trial.message})", "lost")
        else:
            trial.status, trial.message = "FAILED", f"flow run {kind}: {message}"
            self._end_attempt(attempt, "FAILED", trial.message, "failed")
        self.oracle.end_trial(trial)  # an INVALID trial goes to the retry queue, if it may
        self.oracle.save()  # end_trial saved it before it let go of the slot
        self.save()
        if trial.status == "COMPLETED":
            result = f"{self.params.tune.objective} {trial.score:.4f}"
        elif trial.status == "INVALID":
            result = f"runs again: {trial.message}"
        else:
            result = f"failed: {trial.message}"
        line = f"[tune] trial {trial.trial_id} (attempt {attempt['attempt']}) ended: {result}"
        self.log.report(line, self.oracle)

    def _end_attempt(self, attempt: dict, status: str, why: str, outcome: str) -> None:
        """Record how an attempt ended, in pool.json and (unless its trial did) in MLflow."""
        client = self.log.client
        if client.get_run(attempt["run_id"]).info.status == "RUNNING":
            client.set_tag(attempt["run_id"], "error", why[:500])
            client.set_terminated(attempt["run_id"], status)
        attempt["outcome"] = outcome
