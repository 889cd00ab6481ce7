"""`cifar10-mlops relocate-store`: a checkout moved to another folder gets its MLflow
artifacts back (ops/relocate.py)."""

import shutil
import sqlite3

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from cifar10_mlops.ops.relocate import relocate
from helpers import cli, error_line

MODEL = "cifar10-cnn"


@pytest.mark.integration
def test_a_moved_checkout_loads_its_champion_again_after_relocating(reproduced, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(reproduced, moved)  # the old folder is gone, as after `mv`
    store = f"sqlite:///{moved}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(store)
    with pytest.raises((OSError, MlflowException)):  # the store points at the old folder
        mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")

    result = cli("relocate-store", cwd=moved)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("mlruns/mlflow.db: changed ") and line.endswith(f" to {moved}/mlruns")
    assert f"{reproduced}/mlruns" in line.split(" paths from ")[1]
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 10)
    run = mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").run_id
    assert "metrics.json" in {a.path.split("/")[-1] for a in mlflow.MlflowClient().list_artifacts(
        run, "evaluation")}  # fmt: skip

    again = cli("relocate-store", cwd=moved)
    assert (
        again.stdout.strip()
        == f"mlruns/mlflow.db: its artifact paths already point at {moved}/mlruns"
    )


def test_dry_run_counts_and_changes_nothing(tmp_path, monkeypatch):
    store = tmp_path / "old" / "mlruns" / "mlflow.db"
    store.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "old")  # where MLflow puts the Default experiment's artifacts
    mlflow.MlflowClient(f"sqlite:///{store}").create_experiment(
        "x", artifact_location=(store.parent / "artifacts").as_uri()
    )
    moved = tmp_path / "new"
    shutil.move(tmp_path / "old", moved)
    before = (moved / "mlruns" / "mlflow.db").read_bytes()
    old, new, changed = relocate(moved / "mlruns" / "mlflow.db", dry_run=True)
    assert (old, new) == ([tmp_path / "old" / "mlruns"], moved / "mlruns") and changed >= 2
    assert (moved / "mlruns" / "mlflow.db").read_bytes() == before
    assert relocate(moved / "mlruns" / "mlflow.db")[2] == changed
    with sqlite3.connect(moved / "mlruns" / "mlflow.db") as db:
        locations = {r[0] for r in db.execute("SELECT artifact_location FROM experiments")}
    assert locations == {
        (moved / "mlruns" / "0").as_posix(),
        (moved / "mlruns" / "artifacts").as_uri(),
    }


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no MLflow store here"),
        (b"not a database, just text" * 100, "cannot rewrite the MLflow store"),
    ],
)
def test_a_missing_or_foreign_store_is_one_line_and_changes_nothing(tmp_path, content, message):
    store = tmp_path / "mlruns" / "mlflow.db"
    if content is not None:
        store.parent.mkdir()
        store.write_bytes(content)
    result = cli("relocate-store", cwd=tmp_path)
    assert result.returncode == 1
    assert message in error_line(result)
    if content is not None:
        assert store.read_bytes() == content
