"""Real servers and processes for the integration tests, all on 127.0.0.1: start one in its
own process group with its log in a file, wait until it answers, stop it and its children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops.core.health import answers

BIN = Path(sys.executable).parent  # the venv's `mlflow`, `prefect`, `dvc`, `python`


def _worker_ports() -> range:
    """1,000 ports of this pytest-xdist worker's own, below Linux's ephemeral range (32768 on):
    no other worker picks them, and no outgoing connection is given one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 20_000 + 1_000 * (int(worker) % 12 if worker.isdigit() else 0)
    return range(first, first + 1_000)


_PORTS = _worker_ports()
_next_port = _PORTS.start + os.getpid() % 500  # a new pytest run starts elsewhere in the range


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on. Asking the kernel for port 0 raced: the port
    came back free, and another worker's server or an outgoing connection took it before this
    one's server bound it, which then exited "address already in use" (a Prefect server did so
    in CI). Each call here gives the next free port of the worker's own range."""
    global _next_port
    for _ in range(len(_PORTS)):
        port, _next_port = _next_port, _PORTS.start + (_next_port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


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
    """An `mlflow server` serving artifacts through itself, as the compose service does
    (tests/test_services.py runs the compose service's own command), with one worker process
    instead of four: each imports MLflow, seconds of CPU the tests do not need."""
    return [
        BIN / "mlflow", "server", "--backend-store-uri", backend,
        "--artifacts-destination", artifacts, "--serve-artifacts",
        "--host", "127.0.0.1", "--port", port, "--workers", "1",
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


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (apt-get install postgresql), newest version."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def postgres_server(user: str, password: str, init_sql: Path, init_env: dict | None = None):
    """A PostgreSQL server on a free port of 127.0.0.1 with `user`/`password` (password login
    over TCP, as in the compose stack) and `init_sql` run once, with `init_env` in psql's
    environment (as the postgres image's container env); yields its port. As root, the server
    runs as the `postgres` system user: PostgreSQL refuses to run as root."""
    import pwd
    import shutil
    import tempfile

    bindir = postgres_bin()
    home = Path(tempfile.mkdtemp(prefix="cifar10-pg-"))  # outside pytest's root-only tmp
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (home / "pw").write_text(password)
    os.chmod(home / "pw", 0o644)
    port = free_port()
    subprocess.run(
        [*as_user, bindir / "initdb", "-D", home / "data", "-U", user, "--pwfile", home / "pw",
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    log = home / "postgres.log"
    server = subprocess.Popen(
        [*as_user, bindir / "postgres", "-D", home / "data", "-p", str(port), "-k", home,
         "-c", "listen_addresses=127.0.0.1"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = {**os.environ, "PGPASSWORD": password}
    address = ["-h", "127.0.0.1", "-p", str(port), "-U", user]
    psql = [bindir / "psql", *address, "-v", "ON_ERROR_STOP=1"]
    try:
        ready = [bindir / "pg_isready", *address]
        wait_for(lambda: subprocess.run(ready, capture_output=True).returncode == 0,
                 "PostgreSQL", server, log, seconds=60)  # fmt: skip
        subprocess.run([*psql, "-d", "postgres", "-f", init_sql], env={**env, **(init_env or {})},
                       check=True, capture_output=True)  # fmt: skip

        def query(database: str, sql: str) -> list[str]:
            out = subprocess.run([*psql, "-d", database, "-tAc", sql], env=env, check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            return out.split()

        yield port, query
    finally:
        stop(server)
        shutil.rmtree(home, ignore_errors=True)


# What the S3 clients (DVC's s3fs, boto3) read; moto accepts any key unless told to check.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextmanager
def s3_server(folder: Path, buckets: tuple[str, ...] = (), check_keys: bool = False):
    """An S3-compatible server (moto's, from PyPI) on a free port of 127.0.0.1 with `buckets`
    created; yields the environment that points S3 clients at it. `check_keys`: it refuses
    every request, as a store refuses credentials it does not know."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / f"s3-{port}.log"
    env = env_with_bin(AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1", **S3_KEYS)
    server_env = {**env, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_keys else {})}
    server = start(
        [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], log, server_env, folder
    )
    try:
        wait_for(lambda: answers(f"{url}/moto-api/"), "S3 server", server, log)
        if buckets:
            import boto3

            keys = {k.lower(): v for k, v in S3_KEYS.items()}
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **keys)
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
        yield env
    finally:
        stop(server)


def s3_keys(env: dict, bucket: str) -> list[str]:
    """The object keys in `bucket` of the S3 server `env` points at."""
    import boto3

    keys = {k.lower(): v for k, v in S3_KEYS.items()}
    client = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", **keys
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def webhook_receiver():
    """An HTTP server on a free port of 127.0.0.1 that keeps each POSTed JSON body; yields (its
    URL, the list of bodies received)."""
    import http.server
    import json
    import threading

    received: list = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()


@contextmanager
def answering(statuses: dict[str, int], redirects: dict[str, str] | None = None):
    """An HTTP server on a free port of 127.0.0.1 answering a GET of each path with its status
    (404 for any other path), or 302 to the URL `redirects` gives it; yields (its base URL, the
    headers of each request received)."""
    import http.server
    import threading

    received: list = []

    class Answerer(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            received.append(dict(self.headers))
            location = (redirects or {}).get(self.path)
            self.send_response(302 if location else statuses.get(self.path, 404))
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answerer)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()
