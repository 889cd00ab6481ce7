"""Can the search correct a mis-set value? The `tune` stage from a deliberately wrong start.

    .venv/bin/python benchmarks/search_recovery.py                 # default budget, 3 seeds
    .venv/bin/python benchmarks/search_recovery.py --budget full   # `make tune-full`'s budget
    .venv/bin/python benchmarks/search_recovery.py --first-seed 4 --seeds 2   # seeds 4 and 5

train's Muon rate is set 10x too low (MISSET: 0.024 instead of 0.24) and the search space
widened to hold it (SPACE: 0.02-0.5, log), so the first trial is the mis-set value. Each of
--seeds searches (tune.seed --first-seed, the next, ...) runs the real stage (`python -m
cifar10_mlops.stages.tune`) on data/prepared into a throwaway MLflow store. A search recovers when
it adopts, past its noise check, a rate within RECOVERED (0.1-0.5, around the tuned default
0.24). The budgets are
params.yaml's `tune` section (default) and the Makefile's TUNE_FULL overrides (full; a test
checks that FULL holds the same values).

Prints a table and writes benchmarks/results/<date>-search-recovery-<budget>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MISSET = {"muon_learning_rate": 0.024}  # train's value, 10x below the default
SPACE = {"min": 0.02, "max": 0.5, "sampling": "log"}  # tune.space.muon_learning_rate
RECOVERED = (0.1, 0.5)  # an adopted rate in this range corrects the mis-set start
# `make tune-full` (the Makefile's TUNE_FULL): the whole budget the search can rank at
FULL = {"train_per_class": 2000, "max_epochs": 4, "factor": 4}


def params_for(budget: str, seed: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(MISSET)
    params["tune"]["space"]["muon_learning_rate"] = dict(SPACE)
    params["tune"]["seed"] = seed
    if budget == "full":
        params["tune"].update(FULL)
    return params


def search(budget: str, seed: int, data: Path) -> dict:
    """One tune stage from the mis-set start; what it chose and why, and its wall time."""
    with tempfile.TemporaryDirectory(prefix="search-recovery-") as tmp:
        tmp = Path(tmp)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params_for(budget, seed), sort_keys=False))
        cmd = [
            sys.executable, "-m", "cifar10_mlops.stages.tune", "--params", str(tmp / "params.yaml"),
            "--data", str(data.resolve()), "--best", str(tmp / "best.json"),
            "--reports", str(tmp / "reports"), "--state", str(tmp / "state"),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"seed {seed}: the tune stage failed: {result.stderr[-800:]}")
        best = json.loads((tmp / "best.json").read_text())
    rate = best["hyperparameters"].get("muon_learning_rate")
    check = best.get("noise_check") or {}
    return {
        "seed": seed,
        "best_trial_rate": best["best_trial_values"]["muon_learning_rate"],
        "adopted": best["adopted"],
        "adopted_rate": rate,
        "recovered": rate is not None and RECOVERED[0] <= rate <= RECOVERED[1],
        "gain": check.get("gain"),
        "interval": [check.get("low"), check.get("high")],
        "p_value": check.get("p_value"),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=("default", "full"), default="default")
    parser.add_argument("--seeds", type=int, default=3, help="how many searches")
    parser.add_argument("--first-seed", type=int, default=1, help="tune.seed of the first")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: must be at least 1, got {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed: must be at least 0, got {args.first_seed}")
    if not (args.data / "train.npz").is_file():
        parser.error(f"{args.data}: no prepared data; run `dvc repro prepare` first")
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows.append(search(args.budget, seed, args.data))
        print(f"[recovery] {args.budget} seed {seed}: {rows[-1]}", flush=True)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "budget": args.budget,
        "misset": MISSET,
        "space": SPACE,
        "recovered": sum(r["recovered"] for r in rows),
        "searches": len(rows),
        "rows": rows,
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{report['date'][:10]}-search-recovery-{args.budget}.json")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        low, high = r["interval"]
        interval = "no check" if low is None else f"[{low:+.4f}, {high:+.4f}]"
        print(f"seed {r['seed']}: best trial {r['best_trial_rate']:.3g}, "
              f"{'adopted' if r['adopted'] else 'kept 0.024'}, gain interval {interval}, "
              f"{r['seconds']:.0f} s")  # fmt: skip
    print(f"recovered in {report['recovered']} of {len(rows)} searches -> {out}")


if __name__ == "__main__":
    main()
