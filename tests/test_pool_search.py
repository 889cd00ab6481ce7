"""Hyperband with its trials as flow runs on a Prefect work pool (flows/search.py, flows/trial.py).

A Prefect server, an MLflow server and a DVC remote (a folder) run on this machine. The
reproduced tiny pipeline is pushed to the remote and cloned twice; a worker runs in each
clone (neither has data: the first trial each takes pulls it). The search runs in the origin,
6 trials (tune.max_epochs 3, factor 3), two at once. Worker a is killed with its flow run
mid-trial (SIGKILL, as a machine that dies); the heartbeat automation marks that run CRASHED
and the trial runs again on worker b. Every trial is accounted for, in the reports, in
MLflow's tree and in Prefect's, and `dvc commit tune` adopts the result.
"""

import csv
import json
import os
import re
import subprocess
import sys

import mlflow
import pytest
import yaml

from helpers import run_dvc
from servers import start, stop, tail, wait_for
from test_workers import deployed_pool, kill_tree, prefect_client, start_worker

pytestmark = pytest.mark.integration


@pytest.mark.long(seconds=420)
@pytest.mark.extended
def test_a_search_on_two_workers_completes_when_one_is_killed_mid_trial(
    prefect_server, reproduced, tmp_path, migrated_store, monkeypatch
):
    origin = reproduced
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # crashed after 90 s without one
    with deployed_pool(prefect_server, origin, tmp_path, migrated_store, **heartbeat) as (
        a, b, _, url, env,
    ):  # fmt: skip
        params = yaml.safe_load((origin / "params.yaml").read_text())
        params["tune"].update(max_epochs=3, factor=3)  # Hyperband's 6 trials, 11 epochs
        (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        logs = {name: tmp_path / f"worker-{name}.log" for name in ("a", "b", "search")}
        with prefect_client(env) as client:
            workers = {
                "a": start_worker(client, env, "a", a, logs["a"]),
                "b": start_worker(client, env, "b", b, logs["b"]),
            }
            cmd = [sys.executable, "-m", "flows.search", "--pool", "cpu", "--parallel", "2"]
            searcher = start(cmd, logs["search"], env, origin)
            try:
                # the trial's line just before it trains (2-3 s for even a 1-epoch trial)
                wait_for(
                    lambda: "(attempt 1) of search" in logs["a"].read_text(),
                    "worker a training a trial", searcher, logs["search"], seconds=240,
                )  # fmt: skip
                kill_tree(workers.pop("a"))  # the worker and its trial's flow run
                searcher.wait(timeout=600)
            finally:
                for process in [searcher, *workers.values()]:
                    stop(process)
            said = {name: tail(log, 6000) for name, log in logs.items()}
            assert searcher.returncode == 0, said
            assert "ended: runs again: flow run CRASHED" in logs["search"].read_text()
            runs = client.read_flow_runs()
        check_records(origin, url, runs, said)
        one_worker_finds_the_same(origin, url, tmp_path, monkeypatch)


def one_worker_finds_the_same(origin, url: str, tmp_path, monkeypatch) -> None:
    """The same seeded search, its trials one at a time in this process (the trial flow's
    code), finds the same trials and the same best values as the two workers did, one of
    them killed."""
    from cifar10_mlops.core.settings import load_params
    from cifar10_mlops.stages.tune.pool_search import PoolSearch

    monkeypatch.chdir(origin)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    data = origin / "data/prepared"
    search = PoolSearch(load_params(origin / "params.yaml"), data=data,
                        state_root=tmp_path / "one-worker", launcher=InProcess(data), parallel=1,
                        retries=0, poll=0.01)  # fmt: skip
    best = search.run(tmp_path / "best_hparams.json", tmp_path / "reports")
    two = json.loads((origin / "models/best_hparams.json").read_text())
    for key in ("best_trial_values", "score", "trial", "epochs"):
        assert best[key] == two[key], (key, best[key], two[key])
    rows = {
        name: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(f))]
        for name, f in (("one", tmp_path / "reports/trials.csv"),
                        ("two", origin / "reports/tune/trials.csv"))
    }  # fmt: skip
    assert rows["one"] == rows["two"]


def check_records(origin, url: str, runs: list, said: dict) -> None:
    """What the search left: its reports, MLflow's tree, Prefect's, and DVC's adoption."""
    # every trial in the reports, one of them run twice, by two workers
    summary = json.loads((origin / "reports/tune/summary.json").read_text())
    assert summary["trials"] == 6 and summary["rerun_attempts"] >= 1, summary
    trials = (origin / "reports/tune/trials.csv").read_text().splitlines()
    assert len(trials) == 7 and all(",COMPLETED," in row for row in trials[1:]), trials
    best = json.loads((origin / "models/best_hparams.json").read_text())
    assert best["trials"] == 6

    # MLflow: the search's run with a child per attempt; the lost one KILLED and said why
    client = mlflow.MlflowClient(url)
    parent = client.get_run(best["mlflow_run_id"])
    assert parent.data.tags["distributed"] == "work-pool" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    finished = [c for c in children if c.info.status == "FINISHED"]
    killed = [c for c in children if c.info.status == "KILLED"]
    assert sorted(c.data.tags["trial_id"] for c in finished) == [f"{i:04d}" for i in range(6)]
    assert killed and all("worker lost" in c.data.tags["error"] for c in killed)
    assert summary["workers"] == len({c.data.tags["worker"] for c in finished})  # b, maybe a
    assert {c.data.tags["worker"] for c in killed} == {"a"}
    for lost in killed:  # its trial ran again, as a later attempt, on the other worker
        [again] = [c for c in finished if c.data.tags["trial_id"] == lost.data.tags["trial_id"]]
        assert int(again.data.tags["attempt"]) > int(lost.data.tags["attempt"])
        assert again.data.tags["worker"] == "b"

    # Prefect: the trials are subflow runs of the search's flow run; the lost one CRASHED
    [search] = [r for r in runs if r.flow_id and r.name and r.parameters.get("parallel") == 2]
    trial_runs = [r for r in runs if "spec" in r.parameters]
    assert len(trial_runs) == len(children)
    assert all(r.parent_task_run_id is not None for r in trial_runs)
    crashed = {str(r.id) for r in trial_runs if r.state.type.value == "CRASHED"}
    assert crashed == {c.data.tags["prefect_flow_run_id"] for c in killed}
    assert search.state.type.value == "COMPLETED"

    # DVC adopts the result as the tune stage's
    run_dvc(origin, "commit", "--force", "tune")
    assert "tune" not in run_dvc(origin, "status", "tune").stdout


class InProcess:
    """A launcher that runs each trial in this process as it is submitted (the trial flow's
    code, pool_trial.run_trial), except the attempts in `lose`, which end CRASHED untrained as
    if their worker died; after `stop_after` submits it raises KeyboardInterrupt, as a search
    process that is stopped."""

    def __init__(self, data, lose=(), stop_after=None):
        self.data, self.lose, self.stop_after = data, set(lose), stop_after
        self.states, self.submitted, self.cancelled = {}, [], []

    def submit(self, spec: dict) -> str:
        from cifar10_mlops.stages.tune.pool_trial import run_trial

        if self.stop_after is not None and len(self.submitted) >= self.stop_after:
            raise KeyboardInterrupt
        self.submitted.append(spec)
        handle = f"{spec['trial_id']}-{spec['attempt']}"
        if (spec["trial_id"], spec["attempt"]) in self.lose:
            self.states[handle] = ("CRASHED", "no heartbeat for 90 s")
        else:
            run_trial(spec, self.data)
            self.states[handle] = ("COMPLETED", "")
        return handle

    def state(self, handle: str) -> tuple[str, str]:
        return self.states.get(handle, ("RUNNING", ""))

    def cancel(self, handle: str) -> None:
        self.cancelled.append(handle)


class Stuck(InProcess):
    """Attempts in `stuck` stay PENDING untrained, as when their worker took them and died
    before starting them; the others run in this process."""

    def __init__(self, data, stuck):
        super().__init__(data)
        self.stuck = set(stuck)

    def submit(self, spec: dict) -> str:
        if (spec["trial_id"], spec["attempt"]) not in self.stuck:
            return super().submit(spec)
        self.submitted.append(spec)
        handle = f"{spec['trial_id']}-{spec['attempt']}"
        self.states[handle] = ("PENDING", "")
        return handle


class LastFirst(InProcess):
    """Trials run when polled, the newest sent first: with two slots they end in another
    order than they started, as on workers of different speeds."""

    def __init__(self, data):
        super().__init__(data)
        self.pending, self.ended = [], []

    def submit(self, spec: dict) -> str:
        self.submitted.append(spec)
        self.pending.append(spec)
        return f"{spec['trial_id']}-{spec['attempt']}"

    def state(self, handle: str) -> tuple[str, str]:
        from cifar10_mlops.stages.tune.pool_trial import run_trial

        if self.pending and handle == self._handle(self.pending[-1]):
            spec = self.pending.pop()
            run_trial(spec, self.data)
            self.states[handle] = ("COMPLETED", "")
            self.ended.append(spec["trial_id"])
        return super().state(handle)

    @staticmethod
    def _handle(spec: dict) -> str:
        return f"{spec['trial_id']}-{spec['attempt']}"


def pool_search(prepared, params_file, launcher, retries=2, parallel=2, **extra):
    from cifar10_mlops.core.settings import load_params
    from cifar10_mlops.stages.tune.pool_search import PoolSearch

    params = load_params(params_file())
    return PoolSearch(params, data=prepared, state_root=prepared.parents[1] / "models/tuner-pool",
                      launcher=launcher, parallel=parallel, retries=retries, poll=0.01,
                      **extra)  # fmt: skip


@pytest.mark.long(seconds=40)
@pytest.mark.extended  # a search of 5 trials in this process: 40 s
def test_a_trial_whose_worker_never_starts_it_is_cancelled_and_runs_again(
    in_project, prepared, params_file
):
    """A flow run left PENDING (its worker took it and died before starting it: no
    heartbeat for the crash automation to miss) is cancelled after the timeout, and its
    trial runs again; the search completes with every trial."""
    launcher = Stuck(prepared, stuck={("0001", 1)})
    models, reports = in_project / "models", in_project / "reports/tune"
    best = pool_search(prepared, params_file, launcher, pending_timeout=0.2).run(
        models / "best_hparams.json", reports
    )
    assert launcher.cancelled == ["0001-1"]
    rows = {r["trial"]: r["status"] for r in csv.DictReader(open(reports / "trials.csv"))}
    assert set(rows.values()) == {"COMPLETED"} and len(rows) == best["trials"] == 5
    [lost] = [c for c in child_runs(best["mlflow_run_id"]) if c.info.status == "KILLED"]
    assert lost.data.tags["trial_id"] == "0001" and lost.data.tags["attempt"] == "1"
    assert "PENDING for 0 s: its worker took it and never started it" in lost.data.tags["error"]


@pytest.mark.long(seconds=80)
@pytest.mark.extended  # two searches of 5 trials in this process: 1.5 min
def test_two_slots_whose_trials_end_out_of_order_run_the_trials_of_one(
    in_project, prepared, params_file
):
    """The same seeded search, one trial at a time and two at a time with the newest ending
    first: the same trials (values, epochs, the trial each continues), the same scores and
    the same best values."""
    models, reports = in_project / "models", in_project / "reports/tune"
    results = {}
    for parallel, launcher in ((1, InProcess(prepared)), (2, LastFirst(prepared))):
        best = pool_search(prepared, params_file, launcher, parallel=parallel).run(
            models / "best_hparams.json", reports
        )
        rows = [{k: v for k, v in r.items() if k != "seconds"}
                for r in csv.DictReader(open(reports / "trials.csv"))]  # fmt: skip
        values = [{k: v for k, v in s["hyperparameters"]["values"].items()} for s in
                  sorted(launcher.submitted, key=lambda s: s["trial_id"])]  # fmt: skip
        results[parallel] = (best, rows, values, launcher)
    (best1, rows1, values1, _), (best2, rows2, values2, last_first) = results[1], results[2]
    assert last_first.ended != sorted(last_first.ended)  # they did end out of order
    assert values2 == values1
    assert rows2 == rows1  # trial, status, bracket, round, epochs, continues, values, score
    for key in ("best_trial_values", "score", "trial", "epochs"):
        assert best2[key] == best1[key], key


def child_runs(parent_id: str) -> list:
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )


@pytest.mark.long(seconds=40)
@pytest.mark.extended  # a search of 5 trials in this process: 1.5 min
def test_lost_trials_run_again_until_their_retries_run_out(in_project, prepared, params_file):
    # trial 1 is lost once and runs again; trial 2 is lost twice, more than its 1 retry
    launcher = InProcess(prepared, lose={("0001", 1), ("0002", 1), ("0002", 2)})
    models, reports = in_project / "models", in_project / "reports/tune"
    best = pool_search(prepared, params_file, launcher, retries=1).run(
        models / "best_hparams.json", reports
    )

    rows = {r["trial"]: r for r in csv.DictReader(open(reports / "trials.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {
        "0000": "COMPLETED", "0001": "COMPLETED", "0002": "FAILED", "0003": "COMPLETED",
        "0004": "COMPLETED",
    }  # fmt: skip
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["rerun_attempts"] == 2
    assert best["trials"] == 4 and not (models / "tuner-pool").exists()
    children = child_runs(best["mlflow_run_id"])
    attempts = sorted(
        (c.data.tags["trial_id"], c.data.tags["attempt"], c.info.status) for c in children
    )
    assert attempts == [
        ("0000", "1", "FINISHED"), ("0001", "1", "KILLED"), ("0001", "2", "FINISHED"),
        ("0002", "1", "KILLED"), ("0002", "2", "KILLED"), ("0003", "1", "FINISHED"),
        ("0004", "1", "FINISHED"),
    ]  # fmt: skip
    lost = [c for c in children if c.info.status == "KILLED"]
    assert all(c.data.tags["error"].startswith("worker lost (flow run CRASHED") for c in lost)
    # a later round continues from an earlier trial's checkpoint, logged to its MLflow run
    later = [s for s in launcher.submitted if s["weights_run_id"]]
    assert later and all(s["weights_run_id"] in {c.info.run_id for c in children} for s in later)
    refuses_specs_that_disagree_with_mlflow(later[0])


def refuses_specs_that_disagree_with_mlflow(spec: dict) -> None:
    """A worker checks a spec (a flow parameter any Prefect user can set) against the
    search's MLflow records before it trains or logs anything."""
    import copy

    from cifar10_mlops.core.errors import PipelineError
    from cifar10_mlops.stages.tune.pool_trial import check_records

    client = mlflow.MlflowClient()

    def refused(changed: dict) -> str:
        with pytest.raises(PipelineError) as caught:
            check_records(changed, client)
        return str(caught.value)

    assert "is not trial" in refused(spec)  # its run has ended
    client.update_run(spec["run_id"], "RUNNING")  # as while it runs
    check_records(spec, client)
    values = copy.deepcopy(spec)
    [hp] = [h for h in values["hyperparameters"]["space"] if h["config"]["name"] == "dense_units"]
    values["hyperparameters"]["values"]["dense_units"] = 4096
    assert "values are not those" in refused(values)
    params = copy.deepcopy(spec)
    params["params"]["tune"]["max_epochs"] = 500
    assert "params are not those" in refused(params)
    other = {**spec, "run_id": spec["weights_run_id"]}  # a finished run of another trial
    assert "running MLflow run" in refused(other)
    weights = {**spec, "weights_run_id": spec["run_id"]}  # not the trial it continues
    assert "weights_run_id is not" in refused(weights)
    assert "not a run of the MLflow server" in refused({**spec, "run_id": "0" * 32})


@pytest.mark.long(seconds=40)
@pytest.mark.extended  # a search of 5 trials in this process: 1.5 min
def test_a_stopped_search_resumes_under_the_same_mlflow_run(in_project, prepared, params_file):
    models, reports = in_project / "models", in_project / "reports/tune"
    with pytest.raises(KeyboardInterrupt):
        pool_search(prepared, params_file, InProcess(prepared, stop_after=2)).run(
            models / "best_hparams.json", reports
        )
    [state] = (models / "tuner-pool").iterdir()
    record = json.loads((state / "pool.json").read_text())
    assert [a["outcome"] for a in record["attempts"]["0001"]] == ["completed"]
    [stopped] = record["attempts"]["0002"]  # stopped while being sent
    assert (stopped["flow_run_id"], stopped["outcome"]) == (None, "lost")

    launcher = InProcess(prepared)
    best = pool_search(prepared, params_file, launcher).run(models / "best_hparams.json", reports)
    assert best["mlflow_run_id"] == record["mlflow_run_id"] and best["trials"] == 5
    # the finished trials were not run again
    assert {s["trial_id"] for s in launcher.submitted} == {"0002", "0003", "0004"}
    statuses = sorted(c.info.status for c in child_runs(best["mlflow_run_id"]))
    assert statuses == ["FINISHED"] * 5 + ["KILLED"]  # the one stopped while being sent


@pytest.mark.parametrize(
    "args, env, said",
    [
        (["--parallel", "0"], {}, "error: --parallel must be 1-64 and --retries 0-5"),
        (["--pool", "a b"], {}, "error: --pool: "),
        ([], {"PREFECT_API_URL": ""}, "error: PREFECT_API_URL is not set"),
        ([], {"PREFECT_API_URL": "http://127.0.0.1:9/api", "MLFLOW_TRACKING_URI": ""},
         "error: MLFLOW_TRACKING_URI is not an MLflow server"),
    ],
)  # fmt: skip
def test_a_search_that_cannot_run_on_a_pool_is_one_line(project, args, env, said):
    done = subprocess.run(
        [sys.executable, "-m", "flows.search", *args], cwd=project,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(said), done.stderr


SPEC = {"search_id": "s", "trial_id": "0001", "attempt": 1, "params": {},
        "hyperparameters": {}, "data_sha256": "ab", "run_id": "r", "weights_run_id": None,
        "sent_at": 0.0}  # fmt: skip


@pytest.mark.parametrize(
    "spec, said",
    [
        ([SPEC], "trial spec: expected an object, got list"),
        ({**SPEC, "command": "sh"}, "trial spec: missing nothing; unknown command"),
        ({k: v for k, v in SPEC.items() if k != "run_id"}, "trial spec: missing run_id;"),
        ({**SPEC, "params": "tune: {}"}, "trial spec: wrong type of params"),
        ({**SPEC, "attempt": True}, "trial spec: wrong type of attempt"),
        ({**SPEC, "weights_run_id": 7}, "trial spec: wrong type of weights_run_id"),
    ],
)
def test_a_malformed_trial_spec_is_refused_in_one_line(spec, said):
    from cifar10_mlops.core.errors import PipelineError
    from cifar10_mlops.stages.tune.pool_trial import check_spec

    with pytest.raises(PipelineError, match="^" + re.escape(said)):
        check_spec(spec)
    check_spec(SPEC)
