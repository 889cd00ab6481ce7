"""What every stage entry point shares: one-line errors, a scratch folder and one seed."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import scratch
from cifar10_mlops.core.settings import PARAMS_FILE


def run_stage(main: Callable[[], None], name: str | None = None) -> None:
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit code 1.

    SIGTERM (DVC or Prefect cancelling the stage) is raised as KeyboardInterrupt so that
    context managers, such as an open MLflow run, close properly. The process's temporary
    files (its own, MLflow's, TensorFlow's) go to `$TMPDIR/cifar10-<name>-<pid>-*`, removed
    at exit, or by the next run of the stage when this one was killed.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines
    name = name or _stage_name(main)
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    with scratch(Path(tempfile.gettempdir()), f"cifar10-{name}") as tmp:
        os.environ["TMPDIR"], tempfile.tempdir = str(tmp), str(tmp)
        try:
            _run(main)
        finally:  # a caller in the same process (a notebook, a test) gets its own back
            if before[0] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = before[0]
            tempfile.tempdir = before[1]


def _stage_name(main: Callable[[], None]) -> str:
    """`train` for cifar10_mlops.stages.train's main, also when run as `python -m
    cifar10_mlops.stages.train`."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else Path(sys.argv[0]).stem
    return module.removesuffix(".__main__").rpartition(".")[2]


def _run(main: Callable[[], None]) -> None:
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        lost = _tracking_failure(exc)
        if lost is None:
            raise
        print(f"error: {lost}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def _tracking_failure(exc: Exception) -> str | None:
    """One line for an MLflow call that failed after the client's own retries (by default
    7, backing off for about 4 minutes: enough for a tracking server to restart)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    message = " ".join(str(exc.message).split())
    return (
        f"MLflow tracking at {mlflow.get_tracking_uri()} failed after retries, so the stage "
        f"stopped and its MLflow run is incomplete: {message[:300]}"
    )


def stage_parser(doc: str, prog: str | None = None, **paths: str) -> argparse.ArgumentParser:
    """A stage's command line: --params (default params.yaml) and one required path option
    per keyword, `run_info="help"` giving `--run-info` (dvc.yaml passes the paths)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    for name, text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, help=text)
    return parser


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow (through Keras) from params.yaml's `seed`; with
    `deterministic` (params.yaml's), also make TensorFlow's ops deterministic, so that a
    training repeats bit for bit on the same hardware and thread count. Call it before any
    model or dataset is built."""
    import keras  # imported here: stages that never touch TensorFlow should not load it
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python's random, NumPy and TensorFlow alike
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
