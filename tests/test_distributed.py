"""Keras Tuner's distributed mode: the `tune` stage as chief, workers as processes, one search.

Everything runs on 127.0.0.1 against a real MLflow server (the workers log their trials to
it), with the tiny search of conftest.tiny_params (5 trials, 7 epochs) on tiny data.
"""

import json
import signal
import sys
import time

import mlflow
import pytest

from helpers import error_line, place_store, stage_args
from servers import env_with_bin, free_port, mlflow_server, start, stop, tail, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(in_project, prepared, params_file, tmp_path, migrated_store):
    """A function starting the chief (the tune stage) and workers against one MLflow server;
    yields it, then stops whatever still runs."""
    processes = []
    backend = f"sqlite:///{place_store(migrated_store, tmp_path / 'server.db')}"
    with mlflow_server(backend, tmp_path) as (url, *_):
        oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}

        def launch(name: str, args: list, **env):
            log = tmp_path / f"{name}.log"
            process = start(
                [sys.executable, "-m", "cifar10_mlops.stages.tune", *args], log,
                env_with_bin(MLFLOW_TRACKING_URI=url, KERASTUNER_TUNER_ID=name, **oracle, **env),
                in_project,
            )  # fmt: skip
            processes.append(process)
            return process, log

        def run(workers: list[str], **overrides):
            params = str(params_file(**overrides))
            chief = launch("chief", ["--params", params, *stage_args("tune")])
            data, state = stage_args("tune")[1], stage_args("tune")[-1]
            worker_args = ["--worker", "--data", data, "--state", state, "--wait", "120"]
            return chief, {name: launch(name, worker_args) for name in workers}

        mlflow.set_tracking_uri(url)
        run.url = url
        yield run
        for process in processes:
            stop(process)


def trial_runs(parent_id: str) -> list:
    client = mlflow.MlflowClient()
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=100
    )


def finish(process, log, seconds=300) -> str:
    try:
        process.wait(timeout=seconds)
    except Exception:
        pytest.fail(f"{log.name} still running after {seconds} s:\n{tail(log)}")
    assert process.returncode == 0, tail(log)
    return log.read_text()


@pytest.mark.long(seconds=100)
@pytest.mark.extended
def test_chief_and_two_workers_share_one_search(cluster, in_project):
    (chief, chief_log), workers = cluster(["worker-1", "worker-2"])
    out = finish(chief, chief_log)
    assert "[tune] chief: serving the oracle on 127.0.0.1:" in out
    for name, (process, log) in workers.items():
        assert f"[tune] worker {name}: search " in finish(process, log, 60)

    best = json.loads((in_project / "models" / "best_hparams.json").read_text())
    summary = json.loads((in_project / "reports" / "tune" / "summary.json").read_text())
    assert summary["trials"] == best["trials"] == 5 and summary["workers"] == 2
    rows = (in_project / "reports" / "tune" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 5

    runs = trial_runs(best["mlflow_run_id"])
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0000", "0001", "0002", "0003", "0004"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_worker = {r.data.tags["tuner_id"] for r in runs}
    assert by_worker == {"worker-1", "worker-2"}, "the trials were not spread over both workers"
    scores = {r.data.tags["trial_id"]: r.data.metrics["trial/score"] for r in runs}
    assert scores[best["trial"]] == pytest.approx(best["score"])
    # The search state is gone once the chief has written the results.
    assert not (in_project / "models" / "tuner").exists()


@pytest.mark.long(seconds=90)
@pytest.mark.extended
def test_search_completes_when_a_worker_dies_mid_trial(cluster, in_project):
    (chief, chief_log), workers = cluster(["worker-1", "worker-2"], **{"tune.worker_timeout": 15})
    victim, victim_log = workers["worker-2"]
    # Kill worker-2 with SIGKILL during its first trial: no chance to say goodbye.
    wait_for(lambda: "epochs 0->" in victim_log.read_text(), "a trial on worker-2", victim,
             victim_log, seconds=180)  # fmt: skip
    stop(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    out = finish(chief, chief_log)
    assert "[tune] worker worker-2 silent for " in out and "presumed dead" in out
    assert time.monotonic() - killed_at < 240
    finish(*workers["worker-1"], 60)

    best = json.loads((in_project / "models" / "best_hparams.json").read_text())
    assert best["trials"] == 5
    runs = trial_runs(best["mlflow_run_id"])
    lost = [r for r in runs if r.info.status == "KILLED"]
    assert [r.data.tags["tuner_id"] for r in lost] == ["worker-2"]
    assert lost[0].data.tags["error"].startswith("worker lost")
    # The lost trial ran again on worker-1, and every trial has a finished run.
    finished = {r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED"}
    assert finished == {"0000", "0001", "0002", "0003", "0004"}
    assert lost[0].data.tags["trial_id"] in finished


def test_a_worker_without_the_oracle_address_is_a_one_line_error(in_project, prepared, run_module):
    result = run_module(
        "cifar10_mlops.stages.tune", "--worker", "--data", "data/prepared",
        "--state", "models/tuner",
        cwd=in_project, env={"KERASTUNER_ORACLE_IP": ""},
    )  # fmt: skip
    assert result.returncode == 1
    assert error_line(result).startswith(
        "error: a worker needs KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT"
    )


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.5", "tune-chief", "::"])
def test_the_chief_listens_on_loopback_only(in_project, prepared, run_module, address):
    env = {"KERASTUNER_ORACLE_IP": address, "KERASTUNER_ORACLE_PORT": "8000"}
    result = run_module(
        "cifar10_mlops.stages.tune", *stage_args("tune"),
        cwd=in_project, env={**env, "KERASTUNER_TUNER_ID": "chief"},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_line(result).startswith(
        f"error: KERASTUNER_ORACLE_IP={address}: Keras Tuner's oracle has no authentication"
    )
    assert not (in_project / "models").exists()


@pytest.mark.extended  # a training process per case: 1 min
@pytest.mark.parametrize("port", ["http", "70000"])
def test_a_bad_oracle_port_is_a_one_line_error(in_project, prepared, run_module, port):
    env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    result = run_module(
        "cifar10_mlops.stages.tune", "--worker", "--data", "data/prepared",
        "--state", "models/tuner",
        cwd=in_project, env={**env, "KERASTUNER_TUNER_ID": "w1"},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_line(result) == (
        f"error: KERASTUNER_ORACLE_PORT: expected a port 1-65535, got {port!r}"
    )
