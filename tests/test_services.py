"""The compose stack's services run natively on 127.0.0.1, with their exact commands.

Compose resolves docker-compose.yml (tests/compose.py); each service's command and environment
then run here as processes, with only the container addresses mapped onto this machine
(postgres:5432, mlflow:5000, prefect:4200 and 0.0.0.0 onto 127.0.0.1 and free ports,
/app/mlartifacts onto a temporary folder). PostgreSQL comes from Debian's packages and gets
the same init script as the postgres service. A retraining run triggered through the Prefect
server then trains, logs and registers through the MLflow server, both on PostgreSQL.

The laptop's services (`make services`, scripts/services.sh) run with the script itself: its
Prefect server takes requests only with the auth string it keeps in .services/prefect.auth,
and cross-origin ones only from its own UI.
"""

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from compose import example_env, project_copy, resolved
from cifar10_mlops.core import tracking
from cifar10_mlops.core.errors import PipelineError
from helpers import REPO, encode, error_line, git_commit_all, make_images, write_image_archive
from servers import env_with_bin, free_port, postgres_bin, postgres_server, s3_keys, s3_server
from servers import start, stop, tail, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "native-test-secret"
DB_ROLES = {"mlflow": "MLFLOW_DB_PASSWORD", "prefect": "PREFECT_DB_PASSWORD"}
SECRETS = {
    "POSTGRES_PASSWORD": PASSWORD, "MINIO_ROOT_PASSWORD": "native-minio-secret",
    "MLFLOW_DB_PASSWORD": "native-mlflow-db", "PREFECT_DB_PASSWORD": "native-prefect-db",
    "MLFLOW_ADMIN_PASSWORD": "native-mlflow-admin", "MLFLOW_FLASK_SECRET": "native-flask-secret",
    "PREFECT_AUTH_STRING": "native-prefect-auth", "MLFLOW_RUNNER_PASSWORD": "native-runner-pass",
}  # fmt: skip


@pytest.fixture
def native(tmp_path):
    if postgres_bin() is None:
        if os.environ.get("CIFAR10_REQUIRE_SERVICES") == "1":
            pytest.fail("no PostgreSQL server: apt-get install postgresql")
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    ports = {"mlflow": free_port(), "prefect": free_port(), "runner": free_port()}
    archive = write_image_archive(tmp_path / "cifar10-jpg.tar.gz", fmt="JPEG")
    env = example_env(
        **SECRETS,
        MLFLOW_PORT=str(ports["mlflow"]),
        PREFECT_PORT=str(ports["prefect"]),
        CIFAR10_SOURCE=str(archive),
        # One process: uvicorn's supervisor restarts a worker that misses its 5 s health
        # ping, which under CI's load (4 test workers on 2 cores) kept MLflow's workers from
        # ever finishing their imports.
        MLFLOW_WORKERS="1",
    )
    services = resolved(project_copy(tmp_path / "stack"), env)["services"]
    with (
        postgres_server(
            env["POSTGRES_USER"],
            PASSWORD,
            REPO / "docker" / "postgres-init.sql",
            {k: services["postgres"]["environment"][k] for k in DB_ROLES.values()},
        ) as (pg_port, query),
        s3_server(tmp_path) as s3,  # in place of MinIO, which has no Debian package
    ):
        here = {
            "postgres:5432": f"127.0.0.1:{pg_port}",
            "http://mlflow:5000": f"http://127.0.0.1:{ports['mlflow']}",
            "http://prefect:4200": f"http://127.0.0.1:{ports['prefect']}",
            "http://minio:9000": s3["AWS_ENDPOINT_URL"],
            "0.0.0.0": "127.0.0.1",
            "$$": "$",  # compose's escape, left in by `config`
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
            return env_with_bin(**{**values, **extra})

        def healthy(name: str) -> bool:
            check = [mapped(str(a)) for a in services[name]["healthcheck"]["test"][1:]]
            return subprocess.run(check, capture_output=True, env=env_with_bin()).returncode == 0

        native.command, native.environment, native.healthy = command, environment, healthy
        native.query, native.ports, native.services, native.s3 = query, ports, services, s3
        yield native


@pytest.mark.long(seconds=400)
@pytest.mark.extended
def test_stack_retrains_through_its_worker_with_logins_on_postgres_and_s3(
    native, pipeline, tmp_path
):
    git_commit_all(pipeline, "the stack's checkout")  # as the image's /app
    processes = []

    def run(name: str, log_name: str | None = None, **extra) -> subprocess.Popen:
        log = tmp_path / f"{log_name or name}.log"
        process = start(native.command(name), log, native.environment(name, **extra), pipeline)
        processes.append(process)
        return process, log

    try:
        buckets = subprocess.run(
            native.command("buckets"), cwd=pipeline, env=native.environment("buckets"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert buckets.returncode == 0 and "bucket cifar10-mlops: created" in buckets.stdout
        for name in ("mlflow", "prefect"):
            home = {"PREFECT_HOME": str(tmp_path / "prefect-home")} if name == "prefect" else {}
            process, log = run(name, **home)
            wait_for(lambda n=name: native.healthy(n), f"healthy {name}", process, log, 240)

        mlflow_url = f"http://127.0.0.1:{native.ports['mlflow']}"
        prefect_api = f"http://127.0.0.1:{native.ports['prefect']}/api"
        # Services reach MLflow as mlflow:5000, browsers through the published port: both
        # Host headers are allowed, others refused (MLflow's DNS-rebinding protection).
        for host in ("mlflow:5000", f"127.0.0.1:{native.ports['mlflow']}", "localhost:5000"):
            assert host_header_status(mlflow_url, host) == 401, host  # allowed, asks a login
        assert host_header_status(mlflow_url, "evil.example.com") == 403
        # both servers want their login from .env; health checks need none
        search = f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        admin = base64.b64encode(f"admin:{SECRETS['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
        assert call(search)[0] == 401 and call(search, Authorization=f"Basic {admin}")[0] == 200
        prefect_auth = base64.b64encode(SECRETS["PREFECT_AUTH_STRING"].encode()).decode()
        assert call(f"{prefect_api}/flows/filter", "POST", {})[0] == 401
        assert call(f"{prefect_api}/flows/filter", "POST", {},
                    Authorization=f"Basic {prefect_auth}")[0] == 200  # fmt: skip

        retrainer, log = run(
            "retrainer",
            PREFECT_HOME=str(tmp_path / "retrainer-home"),
            PREFECT_WORKER_WEBSERVER_PORT=str(native.ports["runner"]),
            PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
            PREFECT_WORKER_QUERY_SECONDS="2",
        )
        retrainer_env = native.environment("retrainer", PREFECT_HOME=str(tmp_path / "cli-home"))
        assert not any(k.startswith("KERASTUNER") for k in retrainer_env)  # no gRPC oracle
        wait_for(lambda: native.healthy("retrainer"), "healthy retrainer", retrainer, log, 180)

        params = yaml.safe_load((pipeline / "params.yaml").read_text())
        deployment = f"retrain/{params['retrain']['deployment']}"
        triggered = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", deployment, "--watch",
             "--watch-timeout", "900"],  # 5 min alone; over 7 under CI's 4 workers on 2 cores
            env=retrainer_env, capture_output=True, text=True, timeout=960,
        )  # fmt: skip
        assert triggered.returncode == 0, triggered.stdout[-2000:] + tail(log)
        assert "Flow run finished successfully in 'Completed'" in triggered.stdout
        # the worker of pool cpu ran every stage of the checkout, each as a task, in order
        assert "worker" in log.read_text() and "pool 'cpu'" in log.read_text()
        ran = [line.split("Running stage '")[1].split("'")[0]
               for line in log.read_text().splitlines() if "Running stage '" in line]  # fmt: skip
        assert ran == ["download", "prepare", "tune", "train", "evaluate", "register"]

        # the docker pool's login (mlflow-runner): it logs and registers, nothing more
        made = subprocess.run(
            native.command("mlflow-runner"), cwd=pipeline, env=native.environment("mlflow-runner"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
        assert "MLflow user runner: EDIT on experiment cifar10-cnn" in made.stdout, made.stdout
        runner = base64.b64encode(f"runner:{SECRETS['MLFLOW_RUNNER_PASSWORD']}".encode())
        runner = f"Basic {runner.decode()}"
        assert call(search, Authorization=runner)[0] == 200
        user = {"username": "intruder", "password": "a-long-password"}
        assert call(f"{mlflow_url}/api/2.0/mlflow/users/create", "POST", user,
                    Authorization=runner)[0] == 403  # fmt: skip
    finally:
        for process in reversed(processes):
            stop(process)

    # MLflow's runs, registry and users are in PostgreSQL, its artifacts in the S3 store.
    assert native.query("mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0] >= "2"
    assert native.query("mlflow", "SELECT alias FROM registered_model_aliases ORDER BY alias") == [
        "challenger",
        "champion",
    ]
    users = native.query("mlflow_auth", "SELECT username FROM users ORDER BY username")
    assert users == ["admin", "runner"]
    # each service its own role, owning its databases only; none a superuser
    owners = native.query(
        "postgres", "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database "
        "WHERE datname IN ('mlflow', 'mlflow_auth', 'prefect') ORDER BY datname",
    )  # fmt: skip
    assert owners == ["mlflow:mlflow", "mlflow_auth:mlflow", "prefect:prefect"]
    crossed = native.query(
        "postgres", "SELECT has_database_privilege('mlflow', 'prefect', 'CONNECT'), "
        "has_database_privilege('prefect', 'mlflow', 'CONNECT'), "
        "(SELECT bool_or(rolsuper) FROM pg_roles WHERE rolname IN ('mlflow', 'prefect'))",
    )  # fmt: skip
    assert crossed == ["f|f|f"]
    stored = s3_keys(native.s3, "cifar10-mlops")
    assert any(k.startswith("mlflow/") and k.endswith("/model.keras") for k in stored)
    # the run's outputs went to the DVC remote (the checkout has no git remote: `dvc push`)
    assert any(k.startswith("dvc/files/md5/") for k in stored)
    # Prefect's flow and task runs are in PostgreSQL too.
    states = native.query(
        "prefect", "SELECT state_type FROM flow_run WHERE state_type != 'SCHEDULED'"
    )
    assert states == ["COMPLETED"]  # and the schedule's next runs
    tasks = native.query("prefect", "SELECT name FROM task_run ORDER BY start_time")
    assert [t.split("-")[0] for t in tasks][:7] == [
        "pull", "download", "prepare", "tune", "train", "evaluate", "register",
    ]  # fmt: skip


# A server's workers may still be importing when its health check first answers: under CI's
# load one request waited over 10 s. MLflow's own client waits 120 s.
REQUEST_TIMEOUT = 60


def host_header_status(url: str, host: str) -> int:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def call(url: str, method: str = "GET", body=None, **headers: str):
    """(status, response headers, parsed JSON body or None) of one request."""
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            text = response.read()
            status, answer = response.status, response.headers
    except urllib.error.HTTPError as exc:
        text, status, answer = exc.read(), exc.code, exc.headers
    is_json = answer.get("Content-Type", "").startswith("application/json")
    return status, answer, json.loads(text) if is_json and text else None


@pytest.fixture
def local_services(project, tmp_path):
    """`scripts/services.sh start prefect deployment` in a project copy, on a free port; the
    script's own `stop` afterwards, and nothing of them left running."""
    port = free_port()
    env = env_with_bin(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_PORT=str(port))
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(name, None)

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["scripts/services.sh", *args], cwd=project, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip

    pids = []
    try:
        started = script("start", "prefect", "deployment")
        pids = [int(p.read_text()) for p in (project / ".services").glob("*.pid")]
        logs = "".join(tail(log) for log in (project / ".services").glob("*.log"))
        assert started.returncode == 0, started.stdout + started.stderr + logs
        yield project, f"http://127.0.0.1:{port}", started.stdout
    finally:
        script("stop", "deployment", "prefect")
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


@pytest.mark.extended  # a Prefect server with auth: 1 min
@pytest.mark.long(seconds=20)
def test_local_prefect_takes_only_its_auth_string_and_its_own_ui_origin(local_services):
    project, server, started = local_services
    api, auth_file = f"{server}/api", project / ".services" / "prefect.auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    auth = auth_file.read_text().strip()
    assert len(auth) >= 32 and f"PREFECT_API_AUTH_STRING=$(cat {auth_file})" in started
    basic = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}

    # the deployment registered itself with the auth string the script passed it
    name = yaml.safe_load((project / "params.yaml").read_text())["retrain"]["deployment"]
    status, _, deployment = call(f"{api}/deployments/name/retrain/{name}", **basic)
    assert status == 200, deployment
    assert call(f"{api}/flows/filter", "POST", {}, **basic)[0] == 200

    # what any local process, or a page open in a browser, could send without it
    run_now = {"parameters": {"set_params": ["register.min_delta=0.5"]}}
    create_run = f"{api}/deployments/{deployment['id']}/create_flow_run"
    assert call(create_run, "POST", run_now)[0] == 401
    assert call(f"{api}/flows/filter", "POST", {})[0] == 401
    assert call(f"{api}/flow_runs/filter", "POST", {}, Authorization="Basic d3Jvbmc=")[0] == 401
    assert call(f"{api}/health")[0] == 200  # health checks need no login

    # cross-origin: only the server's own UI, under either name of this machine
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    for origin in ("http://evil.example", "http://localhost:1"):
        _, headers, _ = call(create_run, "OPTIONS", Origin=origin, **preflight)
        assert "access-control-allow-origin" not in headers, origin
        _, headers, _ = call(f"{api}/health", Origin=origin)
        assert "access-control-allow-origin" not in headers, origin
    for origin in (server, server.replace("127.0.0.1", "localhost")):
        status, headers, _ = call(create_run, "OPTIONS", Origin=origin, **preflight)
        assert status == 200 and headers["access-control-allow-origin"] == origin

    # the UI is served and asks for the auth string (its login page)
    status, _, settings = call(f"{server}/ui-settings")
    assert status == 200 and settings["auth"] == "BASIC" and settings["api_url"] == api
    status, headers, _ = call(f"{server}/", Accept="text/html")
    assert status == 200 and headers["Content-Type"].startswith("text/html")

    # a flow run without the auth string stops at once with one line naming it
    refused = subprocess.run(
        [sys.executable, "-m", "flows.retrain"], cwd=project, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": ""},
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    last = error_line(refused)
    assert last == (
        f"error: Prefect server {api} refused the request (Unauthorized): set "
        "PREFECT_API_AUTH_STRING to its auth string (`make services` keeps it in "
        ".services/prefect.auth)"
    )
    assert not (project / "data" / "raw").exists()


@pytest.fixture
def local_mlflow(project, tmp_path, monkeypatch):
    """`scripts/services.sh start mlflow` in a project copy on a free port, as the working
    directory; yields (project, its URL); stopped by the script afterwards."""
    port = free_port()
    env = env_with_bin(MLFLOW_PORT=str(port))
    # unset here and after the test: MLflow exports the URI it is given, and the client reads
    # the login from the environment (set-then-delete makes the teardown remove both)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["scripts/services.sh", *args], cwd=project, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip

    try:
        started = script("start", "mlflow")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "password in .services/mlflow.auth" in started.stdout
        monkeypatch.chdir(project)
        yield project, f"http://127.0.0.1:{port}"
    finally:
        script("stop", "mlflow")


@pytest.mark.extended  # an MLflow server with logins and a pipeline: 2.5 min
@pytest.mark.long(seconds=25)
def test_local_mlflow_needs_a_login_and_a_reader_cannot_move_the_champion(
    local_mlflow, monkeypatch
):
    import mlflow
    from mlflow.exceptions import MlflowException

    project, url = local_mlflow
    password_file = project / ".services" / "mlflow.auth"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert call(search)[0] == 401  # no login: nothing, not even reading
    admin = base64.b64encode(f"admin:{password_file.read_text().strip()}".encode()).decode()
    assert call(search, Authorization=f"Basic {admin}")[0] == 200
    assert (
        call(search, Authorization="Basic " + base64.b64encode(b"admin:wrong").decode())[0] == 401
    )

    # the admin registers a model and names its champion, and adds a user who may only read
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password_file.read_text().strip())
    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("logins")
    run = client.create_run(experiment)
    (project / "weights.txt").write_text("not a real model")
    client.log_artifact(run.info.run_id, str(project / "weights.txt"), "model")
    client.create_registered_model("cifar10-cnn")
    source = f"runs:/{run.info.run_id}/model"
    client.create_model_version("cifar10-cnn", source, run.info.run_id)
    client.set_registered_model_alias("cifar10-cnn", "champion", "1")
    from mlflow.server import get_app_client

    get_app_client("basic-auth", tracking_uri=url).create_user("reader", "reader-pass-0001")

    # the reader browses runs and loads the champion, but cannot register or move an alias
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-pass-0001")
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert client.get_model_version_by_alias("cifar10-cnn", "champion").version == "1"
    loaded = Path(mlflow.artifacts.download_artifacts("models:/cifar10-cnn@champion"))
    assert (loaded / "weights.txt").read_text() == "not a real model"
    for attempt in (
        lambda: client.set_registered_model_alias("cifar10-cnn", "champion", "1"),
        lambda: client.create_model_version("cifar10-cnn", source, run.info.run_id),
        lambda: client.delete_run(run.info.run_id),
    ):
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
            attempt()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password_file.read_text().strip())
    assert len(client.search_model_versions("name = 'cifar10-cnn'")) == 1

    # a client with no login, a wrong one, or a password in the URI stops with one line
    image = project / "cat.png"
    image.write_bytes(encode(make_images(1, seed=0)[0][0], "PNG"))
    predict = [sys.executable, "-m", "cifar10_mlops.cli", "predict", str(image)]
    for login, expected in (
        ({}, f"error: MLflow tracking server {url} requires a login: set "
             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
         f"error: MLflow tracking server {url} refused the login of user 'admin': check "
         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ):  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        refused = subprocess.run(
            predict, cwd=project, capture_output=True, text=True, timeout=120,
            env={**env, "MLFLOW_TRACKING_URI": url, **login},
        )  # fmt: skip
        assert refused.returncode == 1 and error_line(refused) == expected, refused.stderr
        assert "Traceback" not in refused.stderr
    with_password = url.replace("http://", "http://admin:secret@")
    with pytest.raises(PipelineError, match="^MLFLOW_TRACKING_URI carries a password: set "):
        tracking.check_reachable(with_password)

    # the reader's login passes the check, and loads the champion through predict's loader
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-pass-0001")
    tracking.check_reachable(url)
