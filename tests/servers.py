"""Real servers and processes for the integration tests, all on 127.0.0.1: start one in its
own process group with its log in a file, wait until it answers, stop it and its children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's `mlflow`, `prefect`, `dvc`, `python`


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait_for(check, what: str, process: subprocess.Popen, log: Path, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, f"{what} exited:\n{tail(log)}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s:\n{tail(log)}"
        time.sleep(0.5)


def start(cmd: list, log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, env=env, stdout=open(log, "w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def env_with_bin(**extra: str) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def mlflow_server_cmd(backend: str, artifacts: Path, port: int) -> list:
    """The command docker-compose.yml's `mlflow` service runs, on 127.0.0.1."""
    return [
        BIN / "mlflow", "server", "--backend-store-uri", backend,
        "--artifacts-destination", artifacts, "--serve-artifacts",
        "--host", "127.0.0.1", "--port", port,
    ]  # fmt: skip


@contextmanager
def mlflow_server(backend: str, folder: Path, port: int | None = None):
    """A running `mlflow server`; yields (its URL, its process, its log)."""
    port = port or free_port()
    log = folder / f"mlflow-{port}.log"
    cmd = mlflow_server_cmd(backend, folder / "artifacts", port)
    server = start(cmd, log, env_with_bin(), folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health"), "MLflow server", server, log)
        yield url, server, log
    finally:
        stop(server)
