"""determinism: the `train` stage's training at params.yaml's settings with TensorFlow's op
determinism (params.yaml `deterministic: true`, the default) and without, each in a fresh
process (the switch is per process: bench.py --determinism-run), alternated: steady-state
seconds per epoch of the whole training split (the first 10 steps excluded), every reading,
the ratio of each mode's fastest, and whether the runs of each mode ended on the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sections.common import ROOT, StepTimer, load_data

BENCH = ROOT / "benchmarks" / "bench.py"  # the entry point that runs one training per process
MODES = ("deterministic", "free")


def determinism(
    *, data: Path, params: Path, overrides: list[str], images: int, repeats: int, epochs: int = 2
) -> dict:
    """Seconds per epoch with and without op determinism, fresh processes alternated; `data`,
    `params`, `overrides` (--set) and `images` are passed on to each process."""
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in runs:
            cmd = [
                sys.executable, str(BENCH), "--determinism-run", mode, "--epochs", str(epochs),
                "--images", str(images), "--data", str(data), "--params", str(params),
                *(["--set", *overrides] if overrides else []),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"determinism run failed: {out.stderr[-1000:]}")
            runs[mode].append(yaml.safe_load(out.stdout.strip().splitlines()[-1]))
            print(f"[determinism] {mode}: {runs[mode][-1]}", flush=True)
    # The fastest reading of each mode: this kind of VM alternates between two speeds about 2x
    # apart for minutes at a time, whatever runs, so a median of 3 can compare a fast state
    # with a slow one; the minimum compares the two modes at the machine's own best.
    seconds = {m: min(r["epoch_seconds"] for r in rs) for m, rs in runs.items()}
    return {
        "seconds_per_epoch": {m: round(v, 2) for m, v in seconds.items()},
        "readings": {m: [r["epoch_seconds"] for r in rs] for m, rs in runs.items()},
        "ratio": round(seconds["deterministic"] / seconds["free"], 4),
        "same_weights": {m: len({r["weights_sha256"] for r in rs}) == 1 for m, rs in runs.items()},
        "weights_sha256": {
            m: sorted({r["weights_sha256"][:16] for r in rs}) for m, rs in runs.items()
        },
        "runs": repeats, "images": images, "epochs": epochs,
    }  # fmt: skip


def determinism_run(params, mode: str, *, data: Path, images: int, epochs: int) -> None:
    """One training of the determinism section, in this process; prints a JSON line."""
    from cifar10_mlops.core.stage import seed_everything
    from cifar10_mlops.stages.train import train
    from cifar10_mlops.training.weights import weights_sha256

    seed_everything(params.seed, deterministic=mode == "deterministic")
    (x, y), val, _ = load_data(data, images)[0]
    cfg = params.train.model_copy(update={"epochs": epochs, "early_stopping_patience": None})
    timer = StepTimer(warmup=10)
    model, _ = train(cfg, (x[:images], y[:images]), (val[0][:1000], val[1][:1000]),
                     seed=params.seed, callbacks=[timer])  # fmt: skip
    rate = timer.rate(cfg.batch_size)
    print(json.dumps({
        "epoch_seconds": round(45_000 / rate, 2), "images_per_s": round(rate, 1),
        "weights_sha256": weights_sha256(model),
    }))  # fmt: skip
