"""The `register` stage against a real sqlite MLflow registry: versions, aliases, promotion."""

import json
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pytest
import yaml

from cifar10_mlops import register
from cifar10_mlops.config import load_params
from conftest import error_line, make_images, stage_args

NAME = "cifar10-cnn"


def run_register(params: Path) -> dict:
    register.main(["--params", str(params), *stage_args("register")])
    return json.loads(Path("reports/registry.json").read_text())


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def version_tags(version: int) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(NAME, str(version)).tags


def test_first_version_becomes_champion_with_lineage_tags(candidate):
    run_id = candidate(0.61)
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python -m train\n")
    result = run_register(candidate.params)

    assert result["version"] == 1 and result["promoted"] is True
    assert result["aliases"] == ["champion", "challenger"] and result["champion"] == 1
    assert result["champion_before"] is None and result["reason"].startswith("first champion")
    assert aliases() == {"champion": "1", "challenger": "1"}
    tags = version_tags(1)
    assert float(tags["test_accuracy"]) == pytest.approx(0.61)
    assert float(tags["test_f1_weighted"]) == pytest.approx(0.60)
    assert float(tags["val_accuracy"]) == pytest.approx(0.62)
    assert tags["data_sha256"] == "ab" * 32
    assert tags["model_md5"] == register.file_digest(Path("models/model.keras"), "md5")
    assert tags["dvc_lock_sha256"] == register.lock_digest(Path("dvc.lock"))
    assert len(tags["git_commit"]) > 0
    assert tags["promotion"] == "champion" and tags["promotion_reason"] == result["reason"]
    assert mlflow.MlflowClient().get_model_version(NAME, "1").run_id == run_id


def test_worse_model_stays_challenger_and_better_one_is_promoted(candidate):
    candidate(0.61)
    run_register(candidate.params)

    candidate(0.55)  # a worse retrain, e.g. one epoch
    worse = run_register(candidate.params)
    assert worse["version"] == 2 and worse["promoted"] is False
    assert worse["aliases"] == ["challenger"] and worse["champion"] == 1
    assert worse["reason"] == (
        "kept champion: test accuracy 0.5500 vs champion v1 0.6100, needs 0.0050 better"
    )
    assert aliases() == {"champion": "1", "challenger": "2"}
    assert version_tags(2)["promotion"] == "challenger"
    assert version_tags(2)["promotion_reason"] == worse["reason"]

    candidate(0.613)  # better, but by less than register.min_delta (0.005)
    assert run_register(candidate.params)["promoted"] is False
    assert aliases() == {"champion": "1", "challenger": "3"}

    candidate(0.70)
    better = run_register(candidate.params)
    assert better["version"] == 4 and better["promoted"] is True
    assert (
        better["reason"]
        == "promoted: test accuracy 0.7000 vs champion v1 0.6100 (higher by 0.0900)"
    )
    assert aliases() == {"champion": "4", "challenger": "4"}
    # the history survives the alias moves
    assert version_tags(1)["promotion"] == "champion" and version_tags(1)["replaced_by"] == "4"
    assert version_tags(2)["promotion"] == "challenger"


def test_rerun_for_the_same_training_run_adds_no_version(candidate):
    candidate(0.61)
    first = run_register(candidate.params)
    again = run_register(candidate.params)
    assert again["version"] == first["version"] == 1
    assert again["promoted"] is True and again["reason"] == "already champion"
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")) == 1


def test_loss_is_minimised_and_margin_is_params():
    cfg = SimpleNamespace(metric="loss", min_delta=0.05)
    champion = SimpleNamespace(version="3", tags={"test_loss": "0.80"})
    assert register.decide(cfg, 0.70, champion)[0] is True
    assert register.decide(cfg, 0.78, champion)[0] is False
    assert register.decide(cfg, 0.90, champion)[0] is False
    untagged = SimpleNamespace(version="3", tags={})
    assert register.decide(cfg, 0.1, untagged) == (
        False,
        "kept: champion v3 has no test_loss tag to compare",
    )


def test_metric_and_margin_come_from_params(candidate, params_file):
    candidate(0.61)
    run_register(candidate.params)
    candidate(0.60, loss=0.5)  # lower accuracy, much lower loss
    params = params_file(**{"register.metric": "loss", "register.min_delta": 0.1})
    result = run_register(params)
    assert result["promoted"] is True and result["metric"] == "test_loss"
    assert aliases()["champion"] == "2"


def test_champion_loads_as_pyfunc_and_keras_and_takes_raw_uint8(candidate):
    candidate(0.61)
    run_register(candidate.params)
    images, _ = make_images(2, seed=3)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    probs = pyfunc.predict(images)
    assert probs.shape == (20, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    path = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion")
    keras_model = keras.models.load_model(Path(path) / "artifacts" / "model.keras")
    np.testing.assert_allclose(keras_model.predict(images, verbose=0), probs, rtol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match="not normalised"):
        pyfunc.predict(images / 255.0)


def test_register_section_is_validated(params_file, run_module, in_project):
    params = params_file(**{"register.min_delta": -0.1})
    result = run_module("cifar10_mlops.register", "--params", str(params), *stage_args("register"))
    assert result.returncode == 1
    assert error_line(result) == (f"error: {params}: register.min_delta: must be >= 0, got -0.1")
    cfg = yaml.safe_load(Path(params).read_text())
    assert load_params(params_file()).register.model_name == cfg["register"]["model_name"]
