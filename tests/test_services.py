"""The compose stack's services run natively on 127.0.0.1, with their exact commands.

Compose resolves docker-compose.yml (tests/compose.py); each service's command and environment
then run here as processes, with only the container addresses mapped onto this machine
(postgres:5432, mlflow:5000, prefect:4200 and 0.0.0.0 onto 127.0.0.1 and free ports,
/app/mlartifacts onto a temporary folder). PostgreSQL comes from Debian's packages and gets
the same init script as the postgres service. A retraining run triggered through the Prefect
server then trains, logs and registers through the MLflow server, both on PostgreSQL.
"""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from compose import example_env, project_copy, resolved
from conftest import REPO, write_image_archive
from servers import env_with_bin, free_port, postgres_bin, postgres_server, start, stop
from servers import tail, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "native-test-secret"


@pytest.fixture
def native(tmp_path):
    if postgres_bin() is None:
        if os.environ.get("CIFAR10_REQUIRE_SERVICES") == "1":
            pytest.fail("no PostgreSQL server: apt-get install postgresql")
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    ports = {"mlflow": free_port(), "prefect": free_port(), "runner": free_port()}
    archive = write_image_archive(tmp_path / "cifar10-jpg.tar.gz", fmt="JPEG")
    env = example_env(
        POSTGRES_PASSWORD=PASSWORD,
        MLFLOW_PORT=str(ports["mlflow"]),
        PREFECT_PORT=str(ports["prefect"]),
        CIFAR10_SOURCE=str(archive),
    )
    services = resolved(project_copy(tmp_path / "stack"), env)["services"]
    with postgres_server(env["POSTGRES_USER"], PASSWORD, REPO / "docker" / "postgres-init.sql") as (
        pg_port,
        query,
    ):
        here = {
            "postgres:5432": f"127.0.0.1:{pg_port}",
            "http://mlflow:5000": f"http://127.0.0.1:{ports['mlflow']}",
            "http://prefect:4200": f"http://127.0.0.1:{ports['prefect']}",
            "/app/mlartifacts": str(tmp_path / "mlartifacts"),
            "0.0.0.0": "127.0.0.1",
            # the health checks, which run inside each container
            "127.0.0.1:5000": f"127.0.0.1:{ports['mlflow']}",
            "127.0.0.1:4200": f"127.0.0.1:{ports['prefect']}",
            "127.0.0.1:8080": f"127.0.0.1:{ports['runner']}",
        }

        def mapped(text: str) -> str:
            for container, native_value in here.items():
                text = text.replace(container, native_value)
            return text

        def command(name: str) -> list[str]:
            args = [mapped(str(a)) for a in services[name]["command"]]
            if "--port" in args:
                args[args.index("--port") + 1] = str(ports[name])
            return args

        def environment(name: str, **extra) -> dict:
            values = {k: mapped(str(v)) for k, v in services[name]["environment"].items()}
            return env_with_bin(**values, **extra)

        def healthy(name: str) -> bool:
            check = [mapped(str(a)) for a in services[name]["healthcheck"]["test"][1:]]
            return subprocess.run(check, capture_output=True, env=env_with_bin()).returncode == 0

        native.command, native.environment, native.healthy = command, environment, healthy
        native.query, native.ports, native.services = query, ports, services
        yield native


@pytest.mark.long(seconds=160)
def test_stack_retrains_through_mlflow_and_prefect_on_postgres(native, pipeline, tmp_path):
    processes = []
    try:
        for name in ("mlflow", "prefect"):
            log = tmp_path / f"{name}.log"
            home = {"PREFECT_HOME": str(tmp_path / "prefect-home")} if name == "prefect" else {}
            processes.append(
                start(native.command(name), log, native.environment(name, **home), tmp_path)
            )
            wait_for(lambda n=name: native.healthy(n), f"healthy {name}", processes[-1], log)

        mlflow_url = f"http://127.0.0.1:{native.ports['mlflow']}"
        # Services reach MLflow as mlflow:5000, browsers through the published port: both
        # Host headers are allowed, others refused (MLflow's DNS-rebinding protection).
        for host in ("mlflow:5000", f"127.0.0.1:{native.ports['mlflow']}", "localhost:5000"):
            assert host_header_status(mlflow_url, host) == 200, host
        assert host_header_status(mlflow_url, "evil.example.com") == 403

        log = tmp_path / "retrainer.log"
        retrainer_env = native.environment(
            "retrainer",
            PREFECT_HOME=str(tmp_path / "retrainer-home"),
            PREFECT_RUNNER_SERVER_PORT=str(native.ports["runner"]),
        )
        assert retrainer_env["KERASTUNER_ORACLE_IP"] == ""  # no workers: in-process search
        retrainer = start(native.command("retrainer"), log, retrainer_env, pipeline)
        processes.append(retrainer)
        wait_for(lambda: native.healthy("retrainer"), "healthy retrainer", retrainer, log, 180)

        params = yaml.safe_load((pipeline / "params.yaml").read_text())
        deployment = f"retrain/{params['retrain']['deployment']}"
        triggered = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", deployment, "--watch",
             "--watch-timeout", "420"],
            env=retrainer_env, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        assert triggered.returncode == 0, triggered.stdout[-2000:] + tail(log)
        assert "Flow run finished successfully in 'Completed'" in triggered.stdout
        # the flow ran every stage of the fresh checkout, each as a task, in dvc.yaml's order
        ran = [line.split("Running stage '")[1].split("'")[0]
               for line in log.read_text().splitlines() if "Running stage '" in line]  # fmt: skip
        assert ran == ["download", "prepare", "tune", "train", "evaluate", "register"]
    finally:
        for process in reversed(processes):
            stop(process)

    # MLflow's runs and registry are in PostgreSQL, its artifacts in the artifacts folder.
    assert native.query("mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0] >= "2"
    assert native.query("mlflow", "SELECT alias FROM registered_model_aliases ORDER BY alias") == [
        "challenger",
        "champion",
    ]
    assert list((tmp_path / "mlartifacts").rglob("model.keras"))
    # Prefect's flow and task runs are in PostgreSQL too.
    states = native.query("prefect", "SELECT state_type FROM flow_run")
    assert states == ["COMPLETED"]
    tasks = native.query("prefect", "SELECT name FROM task_run ORDER BY start_time")
    assert [t.split("-")[0] for t in tasks][:6] == [
        "download", "prepare", "tune", "train", "evaluate", "register",
    ]  # fmt: skip


def host_header_status(url: str, host: str) -> int:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
