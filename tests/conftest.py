"""Tiny synthetic CIFAR-10 archives in both layouts, params shrunk to seconds, and what is
expensive to make shared once per test run.

The images are random noise with a class-dependent mean colour, so that one epoch of
training on a few dozen images already does better than chance.

`make test` runs the suite in parallel (pytest-xdist, `-n` in the Makefile); a plain `pytest`
runs it in one process. What costs seconds to make is made once per run and shared by every
worker (`once`): an MLflow store with its schema migrated (copying it takes 0.03 s; migrating a
new one 1.5-7 s), one tiny pipeline after `dvc repro` (`reproduced_once`), one tiny search.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


from helpers import (
    once,
    make_candidate,
    place_store,
    forget_tracking_uri,
    write_python_archive,
    write_image_archive,
    tiny_params,
    copy_project,
    git_commit_all,
    run_dvc,
    relocate,
    write_prepared,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Training and tuning runs log system metrics every 10 s; the tests' runs last seconds.
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
# MLflow's usage telemetry thread, on in a process that imported MLflow before a test began,
# sets and unsets an environment variable while other threads read os.environ (a KeyError in
# `requests`), and it would call out to the internet from every test run.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.hookimpl(trylast=True)  # after `-m` deselected: the first tests below must run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first (with `--maxschedchunk 1`, xdist hands tests out in this order): one
    test of the shared reproduced pipeline and one of the retrained one (whoever runs them
    builds them, the second after the first), the tests marked `long` (longest first), the
    long tests of the shared pipelines, the other integration tests, the unit tests, then the
    rest of the shared pipelines' tests, last so that no worker waits for the build. It runs
    after `-m` deselected tests: before, the builders it chose were `make test-extended`'s,
    so `make test`'s shared tests all came at once and three of four workers waited 90-153 s
    for the build."""

    def shares(item: pytest.Item) -> bool:
        return "reproduced_once" in item.fixturenames

    first = [
        next((i for i in items if name in i.fixturenames), None)
        for name in ("reproduced", "retrained")
    ]

    def rank(item: pytest.Item) -> tuple[int, float]:
        long = item.get_closest_marker("long")
        if item in first:
            return 0, first.index(item)
        if long and not shares(item):
            return 1, -long.kwargs.get("seconds", 60)
        if shares(item):  # the long ones (make test-extended's) once the long are out
            return (2, 0) if long else (5, 0)
        return (2 if item.get_closest_marker("integration") else 4), 0

    items.sort(key=rank)  # stable: collection order within equal ranks


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty embedded MLflow store (mlflow.db) with every schema migration applied."""

    def make(folder: Path) -> None:
        folder.mkdir()
        create = "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        subprocess.run(
            [sys.executable, "-c", create, uri], cwd=folder, check=True, capture_output=True
        )

    return once(tmp_path_factory, "mlflow-store", make) / "mlflow.db"


@pytest.fixture
def python_archive(tmp_path: Path) -> Path:
    return write_python_archive(tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture
def image_archive(tmp_path: Path) -> Path:
    return write_image_archive(tmp_path / "cifar10-png.tar.gz")


@pytest.fixture
def params_file(tmp_path: Path):
    """Write tiny params (with dotted-key overrides) and return the file's path."""

    def write(**overrides) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def project(tmp_path: Path, migrated_store: Path) -> Path:
    """A scratch copy of the repository, as its own git repo, with its embedded MLflow store
    already migrated."""
    return copy_project(tmp_path / "project", migrated_store)


@pytest.fixture
def pipeline(project, tmp_path, monkeypatch):
    """The project copy with tiny params, reading a tiny JPEG archive via CIFAR10_SOURCE."""
    archive = write_image_archive(tmp_path / "cifar10-jpg.tar.gz", fmt="JPEG")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.setenv("CIFAR10_SOURCE", str(archive))
    forget_tracking_uri(monkeypatch)
    return project


@pytest.fixture
def flow_project(pipeline, monkeypatch):
    """A fresh project copy (nothing run yet, committed) as the working directory, as
    `python -m flows.retrain` runs."""
    git_commit_all(pipeline, "tiny params")
    monkeypatch.chdir(pipeline)
    return pipeline


@pytest.fixture(scope="session")
def reproduced_once(tmp_path_factory, migrated_store) -> Path:
    """A folder with `project`: the tiny pipeline after one `dvc repro` from scratch (its
    output in repro.log), committed to git; and the archive it read. Made once per run."""

    def make(folder: Path) -> None:
        folder.mkdir()
        archive = write_image_archive(folder / "cifar10-jpg.tar.gz", fmt="JPEG")
        project = copy_project(folder / "project", migrated_store)
        (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
        env = {"CIFAR10_SOURCE": str(archive), "MLFLOW_TRACKING_URI": ""}
        (folder / "repro.log").write_text(run_dvc(project, "repro", env=env).stdout)
        git_commit_all(project, "reproduced")

    return once(tmp_path_factory, "reproduced", make)


@pytest.fixture
def reproduced(reproduced_once, tmp_path, monkeypatch) -> Path:
    """A copy of the reproduced pipeline (data, models, DVC cache, MLflow store, git) of its
    own, as a teammate's clone after `make repro`."""
    dest = relocate(reproduced_once / "project", tmp_path / "project")
    monkeypatch.setenv("CIFAR10_SOURCE", str(reproduced_once / "cifar10-jpg.tar.gz"))
    forget_tracking_uri(monkeypatch)
    return dest


@pytest.fixture
def reproduced_flow_project(reproduced, monkeypatch):
    """A copy of the reproduced pipeline (a clone after `make repro`) as the working
    directory. A flow run from scratch runs every stage: tests/test_services.py checks that
    through the deployment."""
    monkeypatch.chdir(reproduced)
    return reproduced


@pytest.fixture(scope="session")
def retrained_once(tmp_path_factory, reproduced_once) -> Path:
    """A folder with `project`: the reproduced pipeline retrained with train.epochs=2 by
    `dvc repro` (its output in repro.log), so its registry has v1 (1 epoch) and v2 (2
    epochs), committed to git. Made once per run."""

    def make(folder: Path) -> None:
        folder.mkdir()
        project = relocate(reproduced_once / "project", folder / "project")
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["epochs"] = 2
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {
            "CIFAR10_SOURCE": str(reproduced_once / "cifar10-jpg.tar.gz"),
            "MLFLOW_TRACKING_URI": "",
        }
        (folder / "repro.log").write_text(run_dvc(project, "repro", env=env).stdout)
        git_commit_all(project, "two epochs")

    return once(tmp_path_factory, "retrained", make)


@pytest.fixture
def retrained(retrained_once, reproduced_once, tmp_path, monkeypatch) -> Path:
    """A copy of retrained_once's project of its own."""
    dest = relocate(retrained_once / "project", tmp_path / "project")
    monkeypatch.setenv("CIFAR10_SOURCE", str(reproduced_once / "cifar10-jpg.tar.gz"))
    forget_tracking_uri(monkeypatch)
    return dest


@pytest.fixture
def run_module():
    """Run `python -m <module> <args>` the way dvc.yaml does; returns the CompletedProcess."""

    def run(module: str, *args: str, cwd: Path | None = None, env: dict | None = None):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=300,
        )

    return run


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """data/prepared as the prepare stage writes it, from 20 images per class."""
    return write_prepared(tmp_path / "data" / "prepared")


@pytest.fixture
def in_empty_project(tmp_path: Path, monkeypatch) -> Path:
    """Run in tmp_path with the default (embedded) MLflow store, as `dvc repro` would; no
    store exists yet."""
    monkeypatch.chdir(tmp_path)
    forget_tracking_uri(monkeypatch)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


@pytest.fixture
def in_project(in_empty_project: Path, migrated_store: Path) -> Path:
    """in_empty_project with its embedded store already migrated, as after a first run."""
    place_store(migrated_store, in_empty_project / "mlruns" / "mlflow.db")
    return in_empty_project


@pytest.fixture
def candidate(in_project, params_file):
    """A function that makes a candidate model as train and evaluate would
    (helpers.make_candidate), logging to the embedded store of in_project; it returns the run
    id. `candidate.params` is the params file."""
    from cifar10_mlops.core import tracking

    params = params_file()
    experiment_id = tracking.configure("cifar10-cnn")

    def make(accuracy: float = 0.5, *, right=None, confidence: float = 0.9, **more) -> str:
        return make_candidate(experiment_id, accuracy, right=right, confidence=confidence, **more)

    make.params = params
    return make


@pytest.fixture
def prefect_server(tmp_path):
    """A Prefect server on a free port of 127.0.0.1; yields the environment that uses it. A
    run waiting for a concurrency slot tries again after 5 s instead of 30."""
    from servers import BIN, answers, free_port, start, stop, wait_for

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_DEPLOYMENT_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }
    log = tmp_path / "prefect-server.log"
    server = start(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log, env, tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: answers(f"{api}/health"), "Prefect server", server, log)
        yield env
    finally:
        stop(server)
