"""How often the drift detector (monitoring/drift.py) raises a false alarm on clean windows of
test images, and how often it finds each shift (monitoring/shifts.py), per window size.

    .venv/bin/python benchmarks/drift_validation.py             # after `make repro`
    .venv/bin/python benchmarks/drift_validation.py --windows 50 --sizes 50,100,250,500
    .venv/bin/python benchmarks/drift_validation.py --jpeg-quality 50 --noise-sigma 3 \
        --brightness 10 --imbalance 0.2 --sizes 25,50,100,250 --name drift-mild  # the limits

The reference is what `evaluate` saves (monitoring/reference.py: images of the validation
split). Windows are drawn at random from a pool of test images, clean or shifted; each window
is tested as `cifar10-mlops drift` tests one. A second, training-split reference is tested on
the same clean windows: why the reference comes from the validation split. Prints a table and
writes benchmarks/results/<date>-drift-validation.json.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cifar10_mlops.core.splits import load_split
from cifar10_mlops.monitoring import drift, reference, shifts

RESULTS = Path(__file__).parent / "results"


def windows(pool: dict, size: int, count: int, rng, labels=None, shift: dict | None = None):
    """`count` windows of `size` rows of a described pool: random ones, or with `labels`, ones
    in which class `shift['favoured']` makes `shift['share']` of the images."""
    for _ in range(count):
        if labels is None:
            idx = rng.choice(len(pool["embeddings"]), size, replace=False)
        else:
            idx = shifts.imbalanced(labels, size, shift["favoured"], shift["share"], rng)
        yield {key: pool[key][idx] for key in drift.KEYS}


def rate(ref: dict, batches, args) -> dict:
    found, tests = 0, dict.fromkeys(drift.TESTS, 0)
    for i, window in enumerate(batches):
        verdict = drift.check_window(
            ref, window, alpha=args.alpha, permutations=args.permutations, seed=i
        )
        found += verdict.detected
        for name in verdict.drifted:
            tests[name] += 1
    return {"detected": found, "windows": args.windows, "by_test": tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--reference-images", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=3000, help="test images windows come from")
    parser.add_argument("--windows", type=int, default=20, help="per shift and window size")
    parser.add_argument("--sizes", default="100,250,500")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jpeg-quality", type=int, default=10)
    parser.add_argument("--noise-sigma", type=float, default=10.0, help="pixel levels of 255")
    parser.add_argument("--brightness", type=float, default=30.0, help="pixel levels added")
    parser.add_argument("--imbalance", type=float, default=0.5, help="share of class 3 (cat)")
    parser.add_argument("--name", default="drift-validation", help="of the results file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import keras

    started = time.monotonic()
    model = keras.models.load_model(args.model)
    rng = np.random.default_rng(args.seed)
    refs = {
        split: reference.build(model, *load_split(args.data, split), args.reference_images,
                               args.seed, 500)
        for split in ("val", "train")
    }  # fmt: skip
    x, y = load_split(args.data, "test")
    pick = rng.choice(len(x), args.pool, replace=False)
    x, y = x[pick], y[pick]
    settings = {
        "jpeg": {"quality": args.jpeg_quality}, "noise": {"sigma": args.noise_sigma},
        "brightness": {"delta": args.brightness},
        "imbalance": {"favoured": 3, "share": args.imbalance},
    }  # fmt: skip
    images = {
        "clean": x, "jpeg": shifts.jpeg(x, **settings["jpeg"]),
        "noise": shifts.noise(x, rng=rng, **settings["noise"]),
        "brightness": shifts.brightness(x, **settings["brightness"]),
    }  # fmt: skip
    pools = {name: reference.describe(model, imgs) for name, imgs in images.items()}
    table = {}
    for size in sizes:
        row = table[str(size)] = {}
        for name in ("clean", "jpeg", "noise", "brightness"):
            row[name] = rate(refs["val"], windows(pools[name], size, args.windows, rng), args)
        row["imbalance"] = rate(
            refs["val"],
            windows(pools["clean"], size, args.windows, rng, y, settings["imbalance"]),
            args,
        )
        row["clean_vs_train_reference"] = rate(
            refs["train"], windows(pools["clean"], size, args.windows, rng), args
        )
        print(
            f"{size:>5} images: "
            + ", ".join(f"{k} {v['detected']}/{v['windows']}" for k, v in row.items()),
            flush=True,
        )
    accuracy = {
        name: float((pool["predicted"] == y).mean()) for name, pool in pools.items()
    }  # how much each shift costs the model
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(args.model), "alpha": args.alpha, "permutations": args.permutations,
        "reference_images": args.reference_images, "pool": args.pool, "windows": args.windows,
        "shifts": settings, "accuracy_on_pool": accuracy, "rates": table,
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"accuracy on the pool: {accuracy}\n-> {out}")


if __name__ == "__main__":
    main()
