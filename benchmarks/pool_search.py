"""Wall time of one fixed search with its trials on 1 and on 2 work-pool workers, 1 thread each.

    .venv/bin/python benchmarks/pool_search.py                 # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/pool_search.py --per-class 500 --max-epochs 3

Sets up, in a temporary folder: a clone of this repository's HEAD with a synthetic prepared
dataset (--per-class images per class, the tests' generator), a Prefect server, an MLflow
server and a DVC remote folder. Then, for 1 and then 2 workers (`python -m flows.worker`,
each with TF_NUM_INTRAOP_THREADS=TF_NUM_INTEROP_THREADS=OMP_NUM_THREADS=1, on a pool of its
own), runs `python -m flows.search --parallel N` on the same search: the tiny test network,
Hyperband with --max-epochs and factor 3 (6 trials at 3), the same seed.

Reports, per worker count:
- wall: the whole `flows.search` command (deploying, the trials, the noise check);
- trials: from the first trial's MLflow run created (sent) to the last one's end;
- wait: per trial, seconds from being sent to its first epoch starting (the trial's
  `trial/wait_seconds`): the worker's poll, the flow-run process, imports and data loading,
  which is what Prefect and the process pool cost a trial;
- train: per trial, its `trial/seconds` (the flow's own time, training included).
The ratio is 1 worker's time over 2 workers'. Prints a table and writes
benchmarks/results/<date>-pool-search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: servers, synthetic data

RESULTS = Path(__file__).parent / "results"
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def make_project(folder: Path, per_class: int, max_epochs: int) -> Path:
    """A clone of HEAD with tiny params, the search's budget and a synthetic data/prepared."""
    from helpers import tiny_params, write_prepared

    project = folder / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    params = tiny_params()
    params["tune"].update(max_epochs=max_epochs, factor=3)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-C", str(project), "-c", "user.name=bench", "-c", "user.email=b@example.invalid"]
    subprocess.run([*git, "commit", "-qam", "the benchmark's search"], check=True)  # workers
    write_prepared(project / "data" / "prepared", per_class=per_class)  # refuse a dirty tree
    dvc = [str(Path(sys.executable).parent / "dvc"), "remote", "add", "--local", "--default"]
    subprocess.run([*dvc, "bench", str(folder / "remote")], cwd=project, check=True)
    return project


def one_setting(project: Path, env: dict, workers: int, folder: Path) -> dict:
    """Run the search with `workers` workers of a pool of their own; its figures."""
    from servers import start, stop, wait_for

    pool = f"bench-{workers}"
    processes = []
    try:
        for number in range(workers):
            log = folder / f"{pool}-worker-{number}.log"
            cmd = [sys.executable, "-m", "flows.worker", "--pool", pool, "--name", f"w{number}"]
            processes.append(start(cmd, log, {**env, **ONE_THREAD}, project))
            wait_for(lambda log=log: "running flows in" in log.read_text(), "worker",
                     processes[-1], log)  # fmt: skip
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "flows.search", "--pool", pool, "--parallel", str(workers)]
        search = subprocess.run(cmd, cwd=project, env={**env, **ONE_THREAD},
                                capture_output=True, text=True, timeout=1800)  # fmt: skip
        wall = time.perf_counter() - started
    finally:
        for process in processes:
            stop(process)
    if search.returncode != 0:
        raise SystemExit(f"flows.search failed with {workers} workers:\n{search.stderr[-3000:]}")
    best = json.loads((project / "models" / "best_hparams.json").read_text())
    # the search rewrote the committed reports/tune/*.csv: workers refuse a dirty checkout
    subprocess.run(["git", "-C", str(project), "checkout", "--", "reports"], check=True)
    return {"workers": workers, "wall_s": round(wall, 1), **trial_figures(best["mlflow_run_id"])}


def trial_figures(parent_id: str) -> dict:
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    children = [
        c
        for c in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
        if c.info.status == "FINISHED"
    ]
    waits = [c.data.metrics["trial/wait_seconds"] for c in children]
    trains = [c.data.metrics["trial/seconds"] for c in children]
    first = min(c.info.start_time for c in children)
    last = max(c.info.end_time for c in children)
    return {
        "trials": len(children),
        "trials_s": round((last - first) / 1000, 1),
        "wait_s_median": round(statistics.median(waits), 1),
        "wait_s_max": round(max(waits), 1),
        "train_s_median": round(statistics.median(trains), 1),
        "train_s_sum": round(sum(trains), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="images per class (300)")
    parser.add_argument("--max-epochs", type=int, default=3, help="tune.max_epochs (3)")
    args = parser.parse_args(argv)

    import mlflow

    from servers import BIN, answers, free_port, mlflow_server, start, stop, wait_for

    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        folder = Path(tmp)
        project = make_project(folder, args.per_class, args.max_epochs)
        port = free_port()
        env = {
            **os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
        }  # fmt: skip
        log = folder / "prefect-server.log"
        cmd = [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        prefect = start(cmd, log, env, folder)
        try:
            wait_for(lambda: answers(f"{env['PREFECT_API_URL']}/health"), "Prefect", prefect, log)
            with mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder) as (url, *_):
                env["MLFLOW_TRACKING_URI"] = url
                mlflow.set_tracking_uri(url)
                rows = [one_setting(project, env, n, folder) for n in (1, 2)]
        finally:
            stop(prefect)
    one, two = rows
    ratios = {k: round(one[k] / two[k], 2) for k in ("wall_s", "trials_s")}
    print(f"{'workers':>8} {'wall s':>8} {'trials s':>9} {'wait s (median, max)':>22} "
          f"{'train s (median, sum)':>22}")  # fmt: skip
    for row in rows:
        print(f"{row['workers']:>8} {row['wall_s']:>8} {row['trials_s']:>9} "
              f"{row['wait_s_median']:>12}, {row['wait_s_max']:<8} "
              f"{row['train_s_median']:>12}, {row['train_s_sum']}")  # fmt: skip
    print(f"1 worker / 2 workers: wall {ratios['wall_s']}x, trials {ratios['trials_s']}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-pool-search.json"
    settings = {"per_class": args.per_class, "max_epochs": args.max_epochs, "factor": 3}
    out.write_text(json.dumps({"settings": settings, "rows": rows, "ratios": ratios}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
