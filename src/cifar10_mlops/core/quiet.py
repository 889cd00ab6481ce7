"""Quiet: what TensorFlow, Keras and MLflow print while a model loads and runs, hidden from a
command's user (`predict`) unless asked for, and shown after all when something unexpected
goes wrong."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

from cifar10_mlops.core.errors import PipelineError

# What loading and running a model prints besides the answer, hidden unless --verbose.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ logs, errors too; read when it is imported
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # tqdm bars while a model downloads
}
QUIET_LOGGERS = ("mlflow", "alembic", "absl", "tensorflow", "keras")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide what the frameworks print meanwhile: TensorFlow's C++ logs, the mlflow, absl and
    Keras loggers, Python warnings and progress bars."""
    # record: a warning that MLflow shows under its own filter ("once") is kept, not printed
    with _environ(QUIET_ENV), _captured_output(), warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        import mlflow  # noqa: F401  sets its logger's level when imported: before ours

        loggers = {logger: logger.level for logger in map(logging.getLogger, QUIET_LOGGERS)}
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in loggers.items():
                logger.setLevel(level)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _captured_output() -> Iterator[None]:
    """File descriptors 1 and 2 into a temporary file, replayed on stderr when something
    other than a PipelineError (one line that says enough) goes wrong.

    TensorFlow 2.19+ logs through absl before it reads TF_CPP_MIN_LOG_LEVEL ("All log messages
    before absl::InitializeLog() is called ...", tensorflow/tensorflow#100442): only the file
    descriptors it writes to keep those lines out of the terminal.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as log:
        saved = os.dup(1), os.dup(2)
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        failed = False
        try:
            yield
        except Exception as exc:
            failed = not isinstance(exc, PipelineError)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
