"""`make smoke`: the whole pipeline on a few hundred images and one epoch, in minutes.

It runs `dvc repro` in a scratch copy of the repository's tracked files (.smoke/, ignored by
git) with params.yaml shrunk by the overrides below, so the repository's own files, outputs
and MLflow store stay untouched. The dataset source is the usual one, CIFAR10_SOURCE included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cifar10_mlops.core import tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.stage import run_stage
from cifar10_mlops.core.repo import init_repository, tracked_files
from cifar10_mlops.core.settings import PARAMS_FILE

OVERRIDES = {
    "prepare": {"train_per_class": 40, "test_per_class": 20},  # 400 training images, 200 test
    "tune": {"max_epochs": 2, "factor": 2},  # 5 trials, 7 epochs in all
    "train": {"epochs": 1},
}


def make_scratch(repo: Path, scratch: Path) -> None:
    """A fresh copy of the tracked files as its own git repository, with smoke params."""
    if scratch.exists():
        shutil.rmtree(scratch)
    for name in tracked_files(repo):  # a PipelineError outside a checkout
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, scratch / name)
    params = yaml.safe_load((repo / PARAMS_FILE).read_text())
    for section, values in OVERRIDES.items():
        params[section].update(values)
    (scratch / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    init_repository(scratch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--scratch", type=Path, default=None, help="default: <repo>/.smoke")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    scratch = (args.scratch or repo / ".smoke").resolve()
    make_scratch(repo, scratch)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the scratch copy's own embedded store
    start = time.perf_counter()
    result = subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=scratch, env=env)
    if result.returncode != 0:
        raise PipelineError(
            f"smoke run failed (dvc repro exited {result.returncode}, see above) in {scratch}"
        )
    metrics = json.loads((scratch / "reports" / "metrics.json").read_text())
    run_id = json.loads((scratch / "models" / "run.json").read_text())["run_id"]
    registry = json.loads((scratch / "reports" / "registry.json").read_text())
    store = f"{tracking.SQLITE}{scratch / tracking.sqlite_file(tracking.DEFAULT_TRACKING_URI)}"
    print(
        f"\nsmoke run passed in {time.perf_counter() - start:.0f}s "
        f"(test accuracy {metrics['accuracy']:.3f} after one epoch on a subset)"
    )
    print(f"  outputs:    {scratch}/data, {scratch}/models, {scratch}/reports")
    print(f"  metrics:    {scratch}/reports/metrics.json")
    print(f"  MLflow run: {run_id} in {store}")
    print(
        f"  registry:   {registry['model_name']} v{registry['version']} "
        f"({', '.join(registry['aliases'])}): {registry['reason']}"
    )
    print(f"  MLflow UI:  mlflow ui --port 5001 --backend-store-uri {store}")


if __name__ == "__main__":
    run_stage(main)
