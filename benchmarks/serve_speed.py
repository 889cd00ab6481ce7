"""Serving speed: `cifar10-mlops serve` against plain `mlflow models serve` on the same model,
at 1, 4 and 16 concurrent clients, for single images and for 64-image batches, with and without
its batching of concurrent requests (`--batch-images 1`).

    .venv/bin/python benchmarks/serve_speed.py                 # the champion, after make repro
    .venv/bin/python benchmarks/serve_speed.py --seconds 5 --clients 1,4

The three servers run side by side with one worker each; every cell (server, batch, clients)
runs for --seconds after a warm-up request, the servers' cells one after the other, so their
ratios hold on a noisy machine. The client runs on the same machine and takes some of its
CPU, the same share from each server. The clients are asyncio tasks of one process (httpx), each
sending the same JSON body (`{"inputs": [...]}` of integer pixels, as `cifar10-mlops request`
writes it) again as soon as the answer came. Prints a table (requests and images per second,
p50 and p99 latency) and writes benchmarks/results/<date>-serve-speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the server helpers
RESULTS = Path(__file__).parent / "results"
OURS, UNBATCHED = "cifar10-mlops serve", "cifar10-mlops serve --batch-images 1"
MLFLOW = "mlflow models serve"
BIN = Path(sys.executable).parent


async def load(port: int, body: bytes, clients: int, seconds: float) -> list[float]:
    """Latencies (s) of the requests `clients` tasks completed in `seconds`; any answer but
    200 ends the benchmark."""
    import httpx

    url = f"http://127.0.0.1:{port}/invocations"
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await client.post(url, content=body, headers=headers)  # warm-up

        async def one() -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.monotonic()
                answer = await client.post(url, content=body, headers=headers)
                if answer.status_code != 200:
                    sys.exit(f"{url}: HTTP {answer.status_code}: {answer.text[:300]}")
                latencies.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(clients)))
        load.elapsed = time.monotonic() - started
    return latencies


def cell(latencies: list[float], elapsed: float, images: int) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": len(ms),
        "requests_per_s": round(len(ms) / elapsed, 2),
        "images_per_s": round(len(ms) * images / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="MLflow model URI (default: the champion)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per cell")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--batches", default="1,64", help="images per request")
    args = parser.parse_args()
    from cifar10_mlops.core import settings, tracking
    from cifar10_mlops.core.health import answers
    from servers import free_port, start, stop, wait_for

    uri = args.model or tracking.champion_uri(settings.load_params().register.model_name)
    # mlflow models serve runs `uvicorn` from PATH: this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    os.environ.update(env)
    folder = Path(tempfile.mkdtemp(prefix="serve-speed-"))
    ours = [str(BIN / "cifar10-mlops"), "serve", "--model", uri, "--reload-seconds", "0"]
    commands = {
        OURS: ours,
        UNBATCHED: [*ours, "--batch-images", "1"],
        MLFLOW: [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                 "--workers", "1"],
    }  # fmt: skip
    ports = {name: free_port() for name in commands}
    servers = {}
    try:
        for number, (name, cmd) in enumerate(commands.items()):
            log = folder / f"server-{number}.log"
            servers[name] = start([*cmd, "--port", ports[name]], log, os.environ, Path.cwd())
            ping = f"http://127.0.0.1:{ports[name]}/ping"
            wait_for(lambda url=ping: answers(url), name, servers[name], log, seconds=300)
        rng = np.random.default_rng(0)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            images = rng.integers(0, 256, (batch, 32, 32, 3)).tolist()
            body = json.dumps({"inputs": images}, separators=(",", ":")).encode()
            for clients in (int(c) for c in args.clients.split(",")):
                row = {"images_per_request": batch, "clients": clients}
                for name in commands:
                    latencies = asyncio.run(load(ports[name], body, clients, args.seconds))
                    row[name] = cell(latencies, load.elapsed, batch)
                speed = {name: row[name]["images_per_s"] for name in commands}
                row["ours_vs_mlflow"] = round(speed[OURS] / speed[MLFLOW], 2)
                row["batched_vs_unbatched"] = round(speed[OURS] / speed[UNBATCHED], 2)
                rows.append(row)
                cells = " | ".join(
                    f"{short} {row[name]['images_per_s']:>7} img/s p50 {row[name]['p50_ms']:>6} "
                    f"p99 {row[name]['p99_ms']:>6} ms"
                    for short, name in zip(("ours", "unbatched", "mlflow"), commands)
                )
                print(
                    f"{batch:>2} x {clients:>2}: {cells} | x{row['ours_vs_mlflow']} mlflow, "
                    f"x{row['batched_vs_unbatched']} unbatched",
                    flush=True,
                )
    finally:
        for process in servers.values():
            stop(process)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "model": uri,
        "seconds_per_cell": args.seconds, "cpus": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-serve-speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
