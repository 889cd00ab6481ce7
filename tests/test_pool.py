"""The retrain deployment's pull step on a work-pool worker (ops/pool.py): the worker's own
checkout, or a one-line error saying how to start the worker. Two real workers run the
deployment in test_workers.py."""

import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.pool import CHECKOUT_VAR, enter_checkout
from helpers import REPO


def test_a_run_enters_the_workers_checkout(monkeypatch):
    monkeypatch.setenv(CHECKOUT_VAR, f" {REPO} ")
    assert enter_checkout() == {"directory": str(REPO)}


def test_a_worker_without_a_checkout_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKOUT_VAR, raising=False)
    with pytest.raises(PipelineError, match=f"^{CHECKOUT_VAR} is not set on this worker: start"):
        enter_checkout()
    monkeypatch.setenv(CHECKOUT_VAR, str(tmp_path))
    with pytest.raises(PipelineError) as err:
        enter_checkout()
    assert str(err.value) == (
        f"{CHECKOUT_VAR}={tmp_path} is not a checkout of this project "
        "(no dvc.yaml, flows/retrain.py)"
    )
