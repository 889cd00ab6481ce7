"""docker-compose.yml checked by a real Compose implementation (no Docker engine needed)."""

import pytest

from compose import compose, example_env, project_copy, resolved
from conftest import REPO

pytestmark = pytest.mark.integration

SERVERS = ("postgres", "mlflow", "prefect", "retrainer", "retrainer-gpu")


@pytest.fixture
def folder(tmp_path):
    return project_copy(tmp_path / "stack")


@pytest.fixture
def stack(folder):
    return resolved(folder, example_env(POSTGRES_PASSWORD="not-a-real-secret"))["services"]


def published(port) -> tuple[str, str]:
    """(host address, host port) of a published port in either Compose's output."""
    if isinstance(port, dict):  # Compose v2
        return port.get("host_ip", "0.0.0.0"), str(port["published"])
    parts = str(port).split(":")  # Compose v1: "127.0.0.1:5000:5000/tcp"
    return (parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0])


def test_the_stack_resolves_with_the_example_env(stack):
    assert set(stack) == {*SERVERS, "tune-worker"}
    assert stack["mlflow"]["command"][:4] == [
        "mlflow", "server", "--backend-store-uri",
        "postgresql+psycopg://cifar10:not-a-real-secret@postgres:5432/mlflow",
    ]  # fmt: skip
    prefect_db = stack["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db == "postgresql+asyncpg://cifar10:not-a-real-secret@postgres:5432/prefect"
    assert stack["retrainer"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert stack["retrainer"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"


def test_every_published_port_is_bound_to_localhost(stack):
    ports = {name: [published(p) for p in svc.get("ports", [])] for name, svc in stack.items()}
    assert ports["mlflow"] == [("127.0.0.1", "5000")]
    assert ports["prefect"] == [("127.0.0.1", "4200")]
    assert all(host == "127.0.0.1" for bound in ports.values() for host, _ in bound)


def test_servers_have_health_checks_and_wait_for_healthy_dependencies(stack):
    for name in SERVERS:
        assert stack[name]["healthcheck"]["test"], name
        assert stack[name]["restart"] == "unless-stopped", name
        for dependency, how in stack[name].get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", (name, dependency)
    assert set(stack["retrainer"]["depends_on"]) == {"mlflow", "prefect"}
    assert set(stack["mlflow"]["depends_on"]) == {"postgres"}


def test_gpu_profile_reserves_nvidia_devices_and_builds_the_cuda_image(stack):
    gpu = stack["retrainer-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["LOCK_FILE"] == "requirements-gpu.lock"
    assert stack["retrainer"]["build"]["args"]["LOCK_FILE"] == "requirements.lock"
    assert gpu["image"] != stack["retrainer"]["image"]


def test_tune_workers_reach_the_chief_and_share_its_state(stack):
    worker, chief = stack["tune-worker"], stack["retrainer"]
    assert worker["environment"]["KERASTUNER_ORACLE_IP"] == "tune-chief"
    assert "tune-chief" in chief["networks"]["default"]["aliases"]
    assert chief["environment"]["KERASTUNER_TUNER_ID"] == "chief"
    shared = "/app/models/tuner"
    assert any(shared in str(v) for v in worker["volumes"])
    assert any(shared in str(v) for v in chief["volumes"])


@pytest.mark.parametrize("env", [None, {}, {"POSTGRES_PASSWORD": ""}])
def test_a_missing_password_is_refused_naming_the_variable(folder, env):
    result = compose(folder, env, "config")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD is not set; copy .env.example to .env and set it" in result.stderr


def test_no_secret_is_committed_and_the_image_runs_as_a_user():
    assert example_env()["POSTGRES_PASSWORD"] == ""
    assert "/.env" in (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "\nUSER app\n" in dockerfile and "ARG PYTHON_IMAGE=python:3.11.11-slim" in dockerfile
