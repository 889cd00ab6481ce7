"""docker-compose.yml as a real Compose implementation resolves it (`config`), for the tests.

Docker's `docker compose` plugin is used when present, else `docker-compose` (Compose v1, which
Debian packages: `apt-get install docker-compose`); neither needs a Docker engine for `config`.
Without either the tests skip, unless CIFAR10_REQUIRE_COMPOSE=1 (as .ci/run sets) makes
that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO

COMPOSE_FILES = ("docker-compose.yml", "Dockerfile", ".env.example", "docker")


def compose_command() -> list[str]:
    if shutil.which("docker"):
        found = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if found.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if os.environ.get("CIFAR10_REQUIRE_COMPOSE") == "1":
        pytest.fail("no Compose implementation: apt-get install docker-compose")
    pytest.skip("no Compose implementation (docker compose or docker-compose)")


def project_copy(folder: Path) -> Path:
    """The compose files alone in `folder`, away from any .env of the checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COMPOSE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy2(source, folder / name)
    return folder


def compose(folder: Path, env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess:
    """Run compose in `folder` with `env` as its .env file (None: no .env at all)."""
    env_file = folder / ".env"
    env_file.unlink(missing_ok=True)
    if env is not None:
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_"))}
    return subprocess.run(
        [*compose_command(), *args], cwd=folder, capture_output=True, text=True, env=clean
    )


def example_env(**overrides: str) -> dict[str, str]:
    """.env.example's values, with overrides."""
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return {**env, **overrides}


def resolved(folder: Path, env: dict[str, str]) -> dict:
    """The compose model with every variable substituted, as compose would run it."""
    result = compose(folder, env, "--profile", "cpu", "--profile", "gpu", "--profile",
                     "pool-workers", "config")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)
