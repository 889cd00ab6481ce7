"""What limits a search spread over many workers, besides the workers: the Hyperband oracle and
the MLflow tracking server (on PostgreSQL, as the compose stack runs it).

    .venv/bin/python benchmarks/search_capacity.py            # needs Debian's postgresql
    .venv/bin/python benchmarks/search_capacity.py --seconds 10 --clients 1,8,32

1. The oracle: keras-tuner's Hyperband oracle (the chief's, in-process, no gRPC) runs a whole
   search of --trials trials, each reporting --epochs epochs: the seconds per call of
   create_trial, update_trial (one per epoch) and end_trial, and so the calls per second one
   chief answers.
2. MLflow: `mlflow server` on a fresh PostgreSQL, --workers 2 (the compose default). Clients
   (threads, each with its own run) send what a trial's epoch sends, one log-batch of 8
   metrics, as fast as answered, for --seconds at each of --clients: requests per second,
   p50 and p99 latency of those answered, and the errors (a refusal or a timeout).

docs/scale-out.md turns these into the scale at which each becomes the limit. Prints a table
and writes benchmarks/results/<date>-search-capacity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' server helpers

RESULTS = Path(__file__).parent / "results"


def oracle_calls(trials: int, epochs: int) -> dict:
    """Seconds per oracle call over a Hyperband search with room for `trials` trials."""
    import keras_tuner as kt

    folder = tempfile.mkdtemp(prefix="capacity-oracle-")
    hp = kt.HyperParameters()
    hp.Float("muon_learning_rate", 0.05, 0.5, sampling="log")
    oracle = kt.oracles.HyperbandOracle(
        objective=kt.Objective("val_accuracy", "max"), max_epochs=epochs, factor=2,
        hyperparameters=hp, seed=0, hyperband_iterations=1000,
    )  # fmt: skip
    oracle._set_project_dir(folder, "capacity")
    times: dict[str, list[float]] = {"create_trial": [], "update_trial": [], "end_trial": []}
    for number in range(trials):
        started = time.perf_counter()
        trial = oracle.create_trial(f"worker-{number % 8}")
        times["create_trial"].append(time.perf_counter() - started)
        for epoch in range(epochs):
            started = time.perf_counter()
            oracle.update_trial(trial.trial_id, {"val_accuracy": 0.1 + number % 7 / 10}, step=epoch)
            times["update_trial"].append(time.perf_counter() - started)
        trial.status = "COMPLETED"
        started = time.perf_counter()
        oracle.end_trial(trial)
        times["end_trial"].append(time.perf_counter() - started)
    return {
        call: {"calls": len(t), "median_ms": round(statistics.median(t) * 1000, 2),
               "p99_ms": round(sorted(t)[int(0.99 * (len(t) - 1))] * 1000, 2),
               "last_ms": round(t[-1] * 1000, 2)}
        for call, t in times.items()
    }  # fmt: skip


def mlflow_load(url: str, clients: int, seconds: float) -> dict:
    """log-batch requests per second from `clients` threads, each logging to its own run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    experiment = client.create_experiment(f"capacity-{clients}-{time.time_ns()}")
    runs = [client.create_run(experiment).info.run_id for _ in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def trial(run_id: str) -> None:
        step = 0
        while time.monotonic() < end:
            metrics = [Metric(f"trial/m{k}", 0.5, int(time.time() * 1000), step) for k in range(8)]
            started = time.monotonic()
            try:
                client.log_batch(run_id, metrics=metrics)
            except Exception as exc:  # noqa: BLE001 - counted: the server refused or timed out
                with lock:
                    errors.append(str(exc).splitlines()[0][:200])
                continue
            with lock:
                latencies.append(time.monotonic() - started)
            step += 1

    threads = [threading.Thread(target=trial, args=(run,)) for run in runs]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(0.99 * (len(ms) - 1))]
    return {
        "clients": clients, "requests": len(ms), "requests_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1),
        "errors": len(errors), "first_error": errors[0] if errors else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="oracle: trials of the search")
    parser.add_argument("--epochs", type=int, default=4, help="oracle: max_epochs (factor 2)")
    parser.add_argument("--seconds", type=float, default=15.0, help="MLflow: per client count")
    parser.add_argument("--clients", default="1,4,16,64")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from servers import (
        BIN,
        answers,
        postgres_bin,
        postgres_server,
        start,
        stop,
        wait_for,
        free_port,
    )

    if postgres_bin() is None:
        sys.exit("error: PostgreSQL's server binaries are missing: apt-get install postgresql")
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    print(f"oracle: Hyperband, {args.trials} trials of up to {args.epochs} epochs", flush=True)
    result["oracle"] = oracle_calls(args.trials, args.epochs)
    for call, row in result["oracle"].items():
        print(f"  {call:>12}: {row['calls']:>5} calls, median {row['median_ms']} ms, "
              f"p99 {row['p99_ms']} ms, last {row['last_ms']} ms", flush=True)  # fmt: skip
    init = ROOT / "docker" / "postgres-init.sql"
    passwords = {"MLFLOW_DB_PASSWORD": "capacity", "PREFECT_DB_PASSWORD": "capacity"}
    folder = Path(tempfile.mkdtemp(prefix="capacity-mlflow-"))
    with postgres_server("postgres", "capacity", init, passwords) as (pg_port, _):
        port, log = free_port(), folder / "mlflow.log"
        backend = f"postgresql+psycopg://mlflow:capacity@127.0.0.1:{pg_port}/mlflow"
        cmd = [BIN / "mlflow", "server", "--backend-store-uri", backend,
               "--artifacts-destination", folder / "artifacts", "--serve-artifacts",
               "--host", "127.0.0.1", "--port", port, "--workers", "2"]  # fmt: skip
        server = start(cmd, log, {**os.environ}, folder)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: answers(f"{url}/health"), "MLflow server", server, log, 180)
            result["mlflow"] = []
            for clients in (int(c) for c in args.clients.split(",")):
                row = mlflow_load(url, clients, args.seconds)
                result["mlflow"].append(row)
                print(f"mlflow: {clients:>3} clients: {row['requests_per_s']:>7} log-batch/s, "
                      f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['errors']} errors "
                      f"{row['first_error'] or ''}", flush=True)  # fmt: skip
        finally:
            stop(server)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-search-capacity.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
