"""docker-compose.yml checked by a real Compose implementation (no Docker engine needed)."""

import pytest
import yaml

from compose import compose, example_env, project_copy, resolved
from helpers import REPO

pytestmark = pytest.mark.integration

SERVERS = (
    "postgres", "minio", "mlflow", "prefect", "retrainer", "retrainer-gpu", "model-server",
    "prometheus",
)  # fmt: skip
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD",
           "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET",
           "PREFECT_AUTH_STRING", "MLFLOW_RUNNER_PASSWORD")  # fmt: skip


def secrets(**overrides: str) -> dict[str, str]:
    return {**{name: f"not-a-real-{name.lower()}" for name in SECRETS}, **overrides}


@pytest.fixture
def folder(tmp_path):
    return project_copy(tmp_path / "stack")


@pytest.fixture
def stack(folder):
    return resolved(folder, example_env(**secrets()))["services"]


def published(port) -> tuple[str, str]:
    """(host address, host port) of a published port in either Compose's output."""
    if isinstance(port, dict):  # Compose v2
        return port.get("host_ip", "0.0.0.0"), str(port["published"])
    parts = str(port).split(":")  # Compose v1: "127.0.0.1:5000:5000/tcp"
    return (parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0])


def test_the_stack_resolves_with_the_example_env(stack):
    assert set(stack) == {
        *SERVERS, "buckets", "pool-worker", "drift-monitor", "mlflow-runner", "docker-worker",
    }  # fmt: skip
    assert stack["mlflow"]["command"][0] == "docker/mlflow-server.sh"
    assert not any("not-a-real" in str(arg) for arg in stack["mlflow"]["command"])  # ps shows it
    mlflow = stack["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql+psycopg://mlflow:not-a-real-mlflow_db_password@postgres:5432/mlflow"
    )
    assert mlflow["MLFLOW_AUTH_DATABASE_URI"] == (
        "postgresql+psycopg://mlflow:not-a-real-mlflow_db_password@postgres:5432/mlflow_auth"
    )
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == "not-a-real-mlflow_admin_password"
    artifacts = stack["mlflow"]["command"].index("--artifacts-destination") + 1
    assert stack["mlflow"]["command"][artifacts] == "s3://cifar10-mlops/mlflow"
    prefect = stack["prefect"]["environment"]
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://prefect:not-a-real-prefect_db_password@postgres:5432/prefect"
    )
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == "not-a-real-prefect_auth_string"
    # the database superuser's password only where the roles are made
    holders = [n for n, svc in stack.items() if "not-a-real-postgres_password" in str(svc)]
    assert holders == ["postgres"]
    for client in ("retrainer", "retrainer-gpu"):
        env = stack[client]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", client
        assert env["MLFLOW_TRACKING_PASSWORD"] == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"], client
        assert env["PREFECT_API_URL"] == "http://prefect:4200/api", client
        assert env["PREFECT_API_AUTH_STRING"] == prefect["PREFECT_SERVER_API_AUTH_STRING"]
        assert env["DVC_REMOTE"] == "s3" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_SECRET_ACCESS_KEY"] == "not-a-real-minio_root_password", client
    assert stack["retrainer"]["environment"]["RETRAIN_POOL"] == "cpu"
    assert stack["retrainer-gpu"]["environment"]["RETRAIN_POOL"] == "gpu"


def test_every_published_port_is_bound_to_localhost(stack):
    ports = {name: [published(p) for p in svc.get("ports", [])] for name, svc in stack.items()}
    assert ports["mlflow"] == [("127.0.0.1", "5000")]
    assert ports["prefect"] == [("127.0.0.1", "4200")]
    assert ports["minio"] == [("127.0.0.1", "9000")]
    assert ports["model-server"] == [("127.0.0.1", "5001")]
    assert ports["prometheus"] == [("127.0.0.1", "9090")]
    assert all(host == "127.0.0.1" for bound in ports.values() for host, _ in bound)


def test_servers_have_health_checks_and_wait_for_healthy_dependencies(stack):
    for name in SERVERS:
        assert stack[name]["healthcheck"]["test"], name
        assert stack[name]["restart"] == "unless-stopped", name
        for dependency, how in stack[name].get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency == "buckets" else ("service_healthy")
            )
            assert how["condition"] == expected, (name, dependency)
    assert set(stack["retrainer"]["depends_on"]) == {"mlflow", "prefect", "buckets"}
    assert set(stack["mlflow"]["depends_on"]) == {"postgres", "buckets"}
    assert stack["buckets"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert stack["buckets"]["restart"] == "no"


def test_gpu_profile_reserves_nvidia_devices_and_builds_the_cuda_image(stack):
    gpu = stack["retrainer-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["LOCK_FILE"] == "requirements-gpu.lock"
    assert stack["retrainer"]["build"]["args"]["LOCK_FILE"] == "requirements.lock"
    assert gpu["image"] != stack["retrainer"]["image"]


def test_pool_workers_join_the_retrainers_pool_and_share_no_work_tree(stack):
    worker, retrainer = stack["pool-worker"], stack["retrainer"]
    assert "flows.worker" in " ".join(worker["command"])
    assert worker["environment"]["RETRAIN_POOL"] == retrainer["environment"]["RETRAIN_POOL"]
    assert not worker.get("volumes")  # its own work tree: data come from the DVC remote
    # Keras Tuner's oracle (no authentication) is served by no container
    assert not any("KERASTUNER" in str(s.get("environment")) for s in stack.values())


def test_the_docker_worker_alone_holds_the_engine_socket_and_runs_as_the_runner(stack):
    worker = stack["docker-worker"]
    assert worker["profiles"] == ["docker-pool"]
    mounts = [str(v.get("target") if isinstance(v, dict) else v.split(":")[1]) for v in
              worker["volumes"]]  # fmt: skip
    assert sorted(mounts) == ["/datasets", "/run/docker.sock"]
    holders = [n for n, s in stack.items() if "docker.sock" in str(s.get("volumes"))]
    assert holders == ["docker-worker"]
    env = worker["environment"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "runner"
    assert env["DOCKER_HOST"] == "unix:///run/docker.sock"
    command = " ".join(worker["command"])
    assert "--type docker" in command and "flows.deploy" in command
    assert worker["depends_on"]["mlflow-runner"]["condition"] == "service_completed_successfully"


# Which secrets each service holds (the env its containers get), and no more.
HOLDS = {
    "postgres": {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD"},
    "minio": {"MINIO_ROOT_PASSWORD"},
    "buckets": {"MINIO_ROOT_PASSWORD"},  # it makes the bucket: S3 only
    "mlflow": {"MLFLOW_DB_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
               "MLFLOW_FLASK_SECRET"},
    "prefect": {"PREFECT_DB_PASSWORD", "PREFECT_AUTH_STRING"},
    "retrainer": {"MLFLOW_ADMIN_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD"},
    "retrainer-gpu": {"MLFLOW_ADMIN_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD"},
    "pool-worker": {"MLFLOW_ADMIN_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD"},
    "model-server": {"MLFLOW_ADMIN_PASSWORD"},  # the champion, through the MLflow server
    "drift-monitor": {"MLFLOW_ADMIN_PASSWORD", "PREFECT_AUTH_STRING"},  # no S3 keys
    # the runner's login: made by the admin, passed by the docker worker to its flow runs
    "mlflow-runner": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_RUNNER_PASSWORD"},
    "docker-worker": {"MLFLOW_RUNNER_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD"},
    "prometheus": set(),
}  # fmt: skip


def test_each_service_gets_only_the_credentials_it_uses(stack):
    values = secrets()
    for name, service in stack.items():
        text = str(service.get("environment", {})) + str(service.get("command", ""))
        held = {secret for secret, value in values.items() if value in text}
        assert held == HOLDS[name], name


def test_prometheus_scrapes_the_model_server_where_it_listens(stack):
    server = stack["model-server"]
    command = server["command"]
    port = command[command.index("--port") + 1]
    config = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"model-server:{port}"]
    assert job["metrics_path"] == "/metrics"
    assert f"http://127.0.0.1:{port}/ping" in str(server["healthcheck"]["test"])
    # the drift test's sample in a volume of its own, not in the container's layer
    sample = command[command.index("--sample-dir") + 1]
    assert any(str(v).endswith(sample) or sample in str(v) for v in server["volumes"])
    assert stack["prometheus"]["build"]["context"].endswith("docker/prometheus")
    # the scheduled drift test reads the same volume, where params.yaml says the window is
    monitor = stack["drift-monitor"]
    assert monitor["command"] == ["python", "-m", "flows.drift", "--serve"]
    sample_dir = yaml.safe_load((REPO / "params.yaml").read_text())["monitor"]["sample_dir"]
    [volume] = monitor["volumes"]
    [served] = server["volumes"]
    assert _volume_source(volume) == _volume_source(served)
    assert _volume_target(volume) == _volume_target(served) == f"/app/{sample_dir}" == sample


def _volume_source(volume) -> str:
    return volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]


def _volume_target(volume) -> str:
    return volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1]


def test_prefects_api_answers_browsers_of_its_own_ui_only(stack):
    allowed = stack["prefect"]["environment"]["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"]
    assert allowed.split(",") == ["http://127.0.0.1:4200", "http://localhost:4200"]


def test_the_image_leaves_out_where_the_checkout_came_from():
    """A remote URL can hold a token (https://token@host/...): .git/config, the reflogs and
    FETCH_HEAD stay out of the image's layers."""
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git/config", ".git/logs/", ".git/FETCH_HEAD"} <= set(ignored)
    assert "git init --quiet" in (REPO / "Dockerfile").read_text()


@pytest.mark.parametrize("missing", SECRETS)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_missing_password_is_refused_naming_the_variable(folder, missing, how):
    env = secrets()
    env.pop(missing) if how == "absent" else env.update({missing: ""})
    result = compose(folder, env, "config")
    assert result.returncode != 0
    assert f"{missing} is not set; copy .env.example to .env and set it" in result.stderr


def test_no_env_file_at_all_is_refused(folder):
    result = compose(folder, None, "config")
    assert result.returncode != 0 and "is not set; copy .env.example to .env" in result.stderr


def test_no_secret_is_committed_and_the_image_runs_as_a_user():
    assert all(example_env()[name] == "" for name in SECRETS)
    assert "/.env" in (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "\nUSER app\n" in dockerfile and "ARG PYTHON_IMAGE=python:3.11.11-slim" in dockerfile


def test_stack_env_fills_every_secret_once_and_never_overwrites(tmp_path):
    import stat
    import subprocess
    import sys

    def write() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, REPO / "scripts" / "stack_env.py", "--example",
             REPO / ".env.example"], cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip

    made = write()
    assert made.returncode == 0, made.stderr
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    assert all(len(values[name]) == 32 for name in SECRETS)
    assert len({values[name] for name in SECRETS}) == len(SECRETS)
    assert values["POSTGRES_USER"] == "cifar10" and values["CIFAR10_SOURCE"] == ""
    before = env_file.read_text()
    again = write()
    assert again.returncode == 1 and "error: .env exists" in again.stderr
    assert env_file.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temporary file left
    # compose takes it as it is
    folder = project_copy(tmp_path / "stack")
    result = compose(folder, values, "config", "--quiet")
    assert result.returncode == 0, result.stderr
