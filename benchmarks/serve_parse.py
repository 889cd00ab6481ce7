"""How long the model server's parse of the largest request holds Python's GIL: MLflow's own
(json.loads, then np.array: what /invocations does for {"inputs": ...}) against the fast path
of `cifar10-mlops serve` (serving/batch.py), on the same bodies, in one run.

    .venv/bin/python benchmarks/serve_parse.py               # 1,024 images, 5 repeats
    .venv/bin/python benchmarks/serve_parse.py --images 64 --repeats 20

Both run in this process, one after the other, so the ratio holds on a noisy machine. Prints a
table (median seconds, peak MiB traced by tracemalloc) and writes
benchmarks/results/<date>-serve-parse.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from mlflow.pyfunc.scoring_server import _decode_json_input
from mlflow.utils.proto_json_utils import parse_tf_serving_input

from cifar10_mlops.serving.batch import pixel_batch
from cifar10_mlops.serving.pyfunc import IMAGE_SHAPE, MAX_IMAGES

RESULTS = Path(__file__).parent / "results"


def mlflow_parse(body: bytes) -> np.ndarray:
    return np.asarray(parse_tf_serving_input(_decode_json_input(body)))


def measure(parse, body: bytes, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of `parse(body)`."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        parse(body)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    parse(body)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(seconds), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=MAX_IMAGES)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, *IMAGE_SHAPE))
    rows = []
    for name, separators in (("compact", (",", ":")), ("default", None)):
        body = json.dumps({"inputs": images.tolist()}, separators=separators).encode()
        assert (pixel_batch(body) == mlflow_parse(body)).all()
        mlflow_s, mlflow_mib = measure(mlflow_parse, body, args.repeats)
        fast_s, fast_mib = measure(pixel_batch, body, args.repeats)
        rows.append({
            "separators": name, "body_mib": len(body) / 2**20,
            "mlflow_s": mlflow_s, "fast_s": fast_s, "speedup": mlflow_s / fast_s,
            "mlflow_peak_mib": mlflow_mib, "fast_peak_mib": fast_mib,
        })  # fmt: skip
    print(f"{args.images} images, median of {args.repeats}")
    print("separators  body MiB  MLflow s  fast s  speed-up  MLflow peak MiB  fast peak MiB")
    for r in rows:
        print(
            f"{r['separators']:<10}  {r['body_mib']:8.1f}  {r['mlflow_s']:8.2f}  {r['fast_s']:6.2f}"
            f"  {r['speedup']:7.1f}x  {r['mlflow_peak_mib']:15.0f}  {r['fast_peak_mib']:13.0f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-serve-parse.json"
    out.write_text(json.dumps({"images": args.images, "repeats": args.repeats, "rows": rows}))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
