"""Prefect's production path, natively: the retrain deployment on a process work pool, run by
two workers in two separate checkouts (flows/deploy.py --pool, flows/worker.py).

A Prefect server, an MLflow server and a DVC remote (a folder) run on this machine. The
reproduced tiny pipeline pushes its outputs to the remote and is cloned twice; neither clone
has data, a DVC cache or CIFAR10_SOURCE. Worker A starts and takes run 1; worker B starts while
it runs, and run 2 waits for run 1 (the deployment runs one at a time), then goes to whichever
worker asks first. Each run
pulls what it needs from the remote (else its download would fail), retrains, registers in
the one MLflow server and records a DVC experiment in its own checkout.
"""

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

from helpers import deploy_to_pool, git, place_store, run_dvc
from servers import mlflow_server, start, stop, tail, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
IDENTITY = {
    "GIT_AUTHOR_NAME": "worker", "GIT_AUTHOR_EMAIL": "worker@example.invalid",
    "GIT_COMMITTER_NAME": "worker", "GIT_COMMITTER_EMAIL": "worker@example.invalid",
}  # fmt: skip


def clone(origin: Path, dest: Path, remote: Path) -> Path:
    """A teammate's checkout: git clone, the shared DVC remote as its default, nothing else."""
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    run_dvc(dest, "remote", "add", "--local", "--default", "shared", str(remote))
    return dest


@contextmanager
def deployed_pool(prefect_server, origin, tmp_path, migrated_store, **extra):
    """The origin pushed to a DVC remote folder, two clean clones of it (`a`, `b`), an MLflow
    server, and the deployment on the pool `cpu` made from `a`; yields (a, b, remote, url,
    the workers' environment)."""
    remote = tmp_path / "dvc-remote"
    run_dvc(origin, "remote", "add", "--local", "--default", "shared", str(remote))
    run_dvc(origin, "push")
    a = clone(origin, tmp_path / "checkout-a", remote)
    b = clone(origin, tmp_path / "checkout-b", remote)
    backend = f"sqlite:///{place_store(migrated_store, tmp_path / 'mlflow.db')}"
    with mlflow_server(backend, tmp_path) as (url, _, _):
        env = {**prefect_server, **IDENTITY, "MLFLOW_TRACKING_URI": url, **extra}
        env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # workers poll every 2 s, not 10
        for name in ("CIFAR10_SOURCE", "DVC_REMOTE", "MLFLOW_TRACKING_USERNAME"):
            env.pop(name, None)
        assert "created process work pool 'cpu'" in deploy_to_pool(a, env)
        yield a, b, remote, url, env


def start_worker(client, env: dict, name: str, checkout: Path, log: Path):
    """`python -m flows.worker --pool cpu --name NAME` in `checkout`, once the server sees it
    online."""
    cmd = [sys.executable, "-m", "flows.worker", "--pool", "cpu", "--name", name]
    process = start(cmd, log, env, checkout)
    wait_for(lambda: name in online_workers(client, "cpu"), f"worker {name}", process, log, 120)
    return process


def prefect_client(env: dict):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


def online_workers(client, pool: str) -> list[str]:
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    found = client.read_workers_for_work_pool(
        pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
    )
    return sorted(w.name for w in found)


@pytest.mark.long(seconds=240)
@pytest.mark.extended
def test_two_workers_in_two_checkouts_retrain_one_at_a_time(
    prefect_server, reproduced, tmp_path, migrated_store
):
    origin = reproduced
    with deployed_pool(prefect_server, origin, tmp_path, migrated_store) as (a, b, _, url, env):
        assert not (a / "data" / "raw").exists() and not (b / ".dvc" / "cache").exists()
        workers = {}
        try:
            with prefect_client(env) as client:
                deployment = client.read_deployment_by_name("retrain/retrain-weekly")
                assert deployment.work_pool_name == "cpu"
                assert deployment.pull_steps == [{"cifar10_mlops.ops.pool.enter_checkout": {}}]
                assert deployment.entrypoint == "flows/retrain.py:retrain"
                assert deployment.global_concurrency_limit.limit == 1
                assert deployment.parameters == {"force": True}

                def worker(name: str, checkout: Path):
                    log = tmp_path / f"worker-{name}.log"
                    workers[name] = (start_worker(client, env, name, checkout, log), log)

                worker("a", a)
                first = client.create_flow_run_from_deployment(deployment.id)
                wait_for(
                    lambda: client.read_flow_run(first.id).state.type.value != "SCHEDULED",
                    "worker a taking run 1", *workers["a"], seconds=60,
                )  # fmt: skip
                worker("b", b)
                second = client.create_flow_run_from_deployment(deployment.id)
                deadline = time.monotonic() + 600
                while True:
                    runs = [client.read_flow_run(r.id) for r in (first, second)]
                    if all(r.state.type.value in TERMINAL for r in runs):
                        break
                    assert time.monotonic() < deadline, [r.state for r in runs]
                    time.sleep(3)
        finally:
            for process, _ in workers.values():
                stop(process)
        logs = "".join(tail(log, 4000) for _, log in workers.values())
        assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], logs
        run1, run2 = runs
        assert run1.end_time <= run2.start_time  # never two retrains at once

        # each ran in the checkout of the worker that took it (run 2 goes to whichever worker
        # polls first once run 1 frees the slot): its experiment there, pushed to the one origin
        took = {w: log.read_text() for w, (_, log) in workers.items()}
        for run in runs:
            [worker] = [w for w, said in took.items() if f"Flow run '{run.name}' submitted" in said]
            checkout = {"a": a, "b": b}[worker]
            names = run_dvc(checkout, "exp", "list", "--name-only").stdout.split()
            assert [n for n in names if n.endswith(run.name)], (worker, names)
        for checkout in (a, b):
            assert git(checkout, "status", "--porcelain", "--untracked-files=no") == ""
        pushed = git(origin, "for-each-ref", "--format=%(refname)", "refs/exps")
        assert run1.name in pushed and run2.name in pushed

        # both in the one MLflow server, each training run tagged with its flow run
        client = mlflow.MlflowClient(url)
        experiment = client.get_experiment_by_name("cifar10-cnn")
        trains = client.search_runs(
            [experiment.experiment_id], "tags.stage = 'train'", max_results=10
        )
        flow_runs = {t.data.tags.get("prefect_flow_run_id") for t in trains}
        assert flow_runs == {str(run1.id), str(run2.id)}
        versions = client.search_model_versions("name = 'cifar10-cnn'")
        assert sorted(v.version for v in versions) == ["1", "2"]


def kill_tree(process) -> None:
    """SIGKILL a process and every process below it, as a machine that dies takes them."""
    import psutil

    root = psutil.Process(process.pid)
    for child in root.children(recursive=True):
        child.kill()
    root.kill()
    process.wait()


@pytest.mark.long(seconds=300)
@pytest.mark.extended
def test_a_worker_killed_mid_run_leaves_a_crashed_run_and_the_next_one_runs(
    prefect_server, reproduced, tmp_path, migrated_store
):
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # crashed after 90 s without one
    with deployed_pool(prefect_server, reproduced, tmp_path, migrated_store, **heartbeat) as (
        a, b, remote, _, env,
    ):  # fmt: skip
        pushed_before = sorted(p.relative_to(remote) for p in remote.rglob("*"))
        logs = {}
        with prefect_client(env) as client:
            deployment = client.read_deployment_by_name("retrain/retrain-weekly")

            def worker(name: str, checkout: Path):
                logs[name] = tmp_path / f"worker-{name}.log"
                return start_worker(client, env, name, checkout, logs[name])

            killed = worker("a", a)
            first = client.create_flow_run_from_deployment(deployment.id)
            wait_for(
                lambda: "Running stage 'train'" in logs["a"].read_text(),
                "run 1 training", killed, logs["a"], seconds=180,
            )  # fmt: skip
            second = client.create_flow_run_from_deployment(deployment.id)
            kill_tree(killed)  # the worker and its flow run, mid-training
            crashed_at = time.monotonic()
            while client.read_flow_run(first.id).state.type.value != "CRASHED":
                assert time.monotonic() - crashed_at < 240, client.read_flow_run(first.id).state
                time.sleep(2)
            waited = time.monotonic() - crashed_at
            survivor = worker("b", b)
            try:
                deadline = time.monotonic() + 300
                while client.read_flow_run(second.id).state.type.value not in TERMINAL:
                    assert time.monotonic() < deadline, client.read_flow_run(second.id).state
                    time.sleep(3)
            finally:
                stop(survivor)
            run1, run2 = client.read_flow_run(first.id), client.read_flow_run(second.id)
    assert run1.state.type.value == "CRASHED" and "no heartbeat" in run1.state.message
    assert 60 < waited < 240, waited
    assert run2.state.type.value == "COMPLETED", tail(logs["b"], 4000)
    # the killed run pushed nothing: the remote holds what the origin pushed, and run 2's
    # experiment; nothing of run 1 (it died before recording)
    assert not list(remote.rglob("*.tmp")) and not list(remote.rglob("tmp*"))
    [name] = run_dvc(b, "exp", "list", "--name-only").stdout.split()
    assert name.endswith(run2.name) and not run_dvc(a, "exp", "list", "--name-only").stdout.split()
    assert set(pushed_before) <= {p.relative_to(remote) for p in remote.rglob("*")}
