"""`make screenshots`: the pages a user opens after `make repro`, shot with headless Chromium
into `screenshots/` (not committed), to look at before a change to what MLflow or `dvc plots`
shows lands, and for the docs.

It starts `mlflow ui` on the embedded store at a free port, finds the run, logged model and
registered version the pipeline made (models/run.json, reports/registry.json) and shoots:
the two saved views of the runs list and the charts, the training run's page, the logged
model, the registered model, the version, and the `dvc plots` page (dvc_plots/index.html,
which `make screenshots` writes first). A page that comes out blank is an error.

python -m cifar10_mlops.ops.screenshots [--out screenshots] [--store mlruns/mlflow.db]
    [--run-info models/run.json] [--registry reports/registry.json]
    [--plots dvc_plots/index.html]

Chromium: `chromium` (Debian's package) or `chromium-browser` on PATH, or CHROMIUM=path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.stage import run_stage

WIDTH = 1600
START_TIMEOUT = 180  # seconds for `mlflow ui` to answer: its first start migrates the store
SHOT_TIMEOUT = 120
BLANK = 16  # a page of fewer colours than this did not render


def browser() -> str:
    """Chromium's path: CHROMIUM, else the first of Debian's and Ubuntu's names on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise PipelineError(f"CHROMIUM={named} is not an executable file")
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise PipelineError("no Chromium on PATH: install Debian's `chromium`, or set CHROMIUM")


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PipelineError(f"{path}: cannot read {what} ({why}); run `make repro` first") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(store: Path, log: Path) -> Iterator[str]:
    """`mlflow ui` on `store` at 127.0.0.1 and a free port; yields its address."""
    if not store.is_file():
        raise PipelineError(f"{store}: no MLflow store; run `make repro` first")
    port = free_port()
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
             f"sqlite:///{store.resolve()}", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def wait_for(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise PipelineError(f"mlflow ui exited ({server.returncode}): {' '.join(last)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise PipelineError(f"mlflow ui did not answer at {url} within {START_TIMEOUT}s")


def mlflow_pages(client, run_id: str, registry: dict) -> list[tuple[str, str, int]]:
    """(file name, address after the UI's `#`, window height) of each MLflow page."""
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise PipelineError(f"run {run_id} has no logged model; run `dvc repro evaluate`")
    model_id = outputs[-1].model_id
    runs = f"/experiments/{experiment}/runs"
    name, version = registry["model_name"], registry["version"]
    return [
        ("runs-leaderboard.png", f"{runs}?viewStateShareKey=leaderboard", 700),
        ("runs-overview.png", f"{runs}?viewStateShareKey=overview", 700),
        ("runs-charts.png", f"{runs}?viewStateShareKey=overview&compareRunsMode=CHART", 1400),
        ("run.png", f"{runs}/{run_id}", 1600),
        ("run-metrics.png", f"{runs}/{run_id}/model-metrics", 1600),
        ("logged-model.png", f"/experiments/{experiment}/models/{model_id}", 1400),
        ("registered-model.png", f"/models/{name}", 1200),
        ("model-version.png", f"/models/{name}/versions/{version}", 1200),
    ]


def shoot(chromium: str, url: str, out: Path, height: int) -> None:
    """One headless screenshot of `url` into `out`, refused when the page came out blank."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        partial = out.with_suffix(".partial.png")
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
             "--virtual-time-budget=20000", f"--screenshot={partial}", url],
            capture_output=True, text=True, timeout=SHOT_TIMEOUT,
        )  # fmt: skip
    if not partial.is_file() or partial.stat().st_size == 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"Chromium wrote no screenshot of {url}: {last}")
    with Image.open(partial) as image:
        colours = image.convert("RGB").getcolors(maxcolors=BLANK)
    if colours is not None:  # fewer than BLANK colours: an empty or error page
        partial.unlink()
        raise PipelineError(f"{url} rendered blank ({len(colours)} colours)")
    partial.replace(out)
    print(f"wrote {out}  ({url})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--store", type=Path, default=Path("mlruns/mlflow.db"))
    parser.add_argument("--run-info", type=Path, default=Path("models/run.json"))
    parser.add_argument("--registry", type=Path, default=Path("reports/registry.json"))
    parser.add_argument("--plots", type=Path, default=Path("dvc_plots/index.html"))
    args = parser.parse_args(argv)
    chromium = browser()
    run_id = read_json(args.run_info, "the training run")["run_id"]
    registry = read_json(args.registry, "the registered version")
    if not args.plots.is_file():
        raise PipelineError(f"{args.plots}: no dvc plots page; run `make screenshots`")
    args.out.mkdir(parents=True, exist_ok=True)

    import mlflow

    with mlflow_ui(args.store, args.out / "mlflow-ui.log") as url:
        client = mlflow.MlflowClient(f"sqlite:///{args.store.resolve()}")
        for name, route, height in mlflow_pages(client, run_id, registry):
            shoot(chromium, f"{url}/#{route}", args.out / name, height)
    shoot(chromium, args.plots.resolve().as_uri(), args.out / "dvc-plots.png", 2600)


if __name__ == "__main__":
    run_stage(main, "screenshots")
