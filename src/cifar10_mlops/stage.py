"""What every stage entry point shares: one-line errors and one seed."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from cifar10_mlops.errors import PipelineError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit code 1.

    SIGTERM (DVC or Prefect cancelling the stage) is raised as KeyboardInterrupt so that
    context managers, such as an open MLflow run, close properly.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (through Keras) from params.yaml's `seed`."""
    import keras  # imported here: stages that never touch TensorFlow should not load it

    keras.utils.set_random_seed(seed)  # Python's random, NumPy and TensorFlow alike


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
