"""The `register` stage against a real sqlite MLflow registry: versions, aliases, promotion."""

import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml

from cifar10_mlops.training import gate
from cifar10_mlops.stages import register
from cifar10_mlops.core.settings import load_params
from cifar10_mlops.core.splits import load_split
from helpers import error_line, make_images, stage_args, write_prepared

NAME = "cifar10-cnn"


def run_register(params: Path) -> dict:
    register.main(["--params", str(params), *stage_args("register")])
    return json.loads(Path("reports/registry.json").read_text())


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def version_tags(version: int) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(NAME, str(version)).tags


def test_first_version_becomes_champion_with_lineage_tags(candidate):
    run_id = candidate(0.6)
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python -m train\n")
    result = run_register(candidate.params)

    assert result["version"] == 1 and result["promoted"] is True
    assert result["aliases"] == ["champion", "challenger"] and result["champion"] == 1
    assert result["champion_before"] is None and result["reason"].startswith("first champion")
    assert result["gate"] is None
    assert aliases() == {"champion": "1", "challenger": "1"}
    tags = version_tags(1)
    assert float(tags["test_accuracy"]) == pytest.approx(0.6)
    assert float(tags["val_accuracy"]) == pytest.approx(0.61)
    assert tags["data_sha256"] == "ab" * 32
    assert tags["test_sha256"] == gate.test_digest(*load_split(Path("data/prepared"), "test"))
    assert tags["model_md5"] == register.file_digest(Path("models/model.keras"), "md5")
    assert tags["dvc_lock_sha256"] == register.lock_digest(Path("dvc.lock"))
    assert len(tags["git_commit"]) > 0
    assert tags["promotion"] == "champion" and tags["promotion_reason"] == result["reason"]
    version = mlflow.MlflowClient().get_model_version(NAME, "1")
    assert version.run_id == run_id
    assert version.description == "Champion: the first version of cifar10-cnn, so nothing to beat."


def test_an_identical_retrain_is_not_promoted(candidate):
    """The same predictions again (a bit-identical retrain): a gain of exactly 0 is not a gain."""
    candidate(0.6)
    run_register(candidate.params)
    candidate(0.6)
    result = run_register(candidate.params)

    assert result["promoted"] is False and aliases() == {"champion": "1", "challenger": "2"}
    g = result["gate"]
    assert (g["gain"], g["low"], g["high"], g["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert (g["challenger_only"], g["champion_only"], g["images"]) == (0, 0, 40)
    assert result["reason"] == (
        "kept champion: test accuracy 0.6000 vs champion v1 0.6000, gain +0.0000, "
        "95% interval [+0.0000, +0.0000] not above 0 (0 vs 0 images right only, McNemar p 1)"
    )


def test_a_small_gain_within_noise_is_not_promoted(candidate):
    """2 more of 40 test images right: higher accuracy (0.65 vs 0.60), far from significant."""
    candidate(0.60)
    run_register(candidate.params)
    candidate(0.65)
    result = run_register(candidate.params)

    assert result["promoted"] is False and aliases()["champion"] == "1"
    g = result["gate"]
    assert g["gain"] == pytest.approx(0.05) and g["low"] <= 0 < g["high"]
    assert (g["challenger_only"], g["champion_only"]) == (2, 0)
    assert g["p_value"] == pytest.approx(0.5)  # McNemar exact: 2 of 2 discordant, two-sided
    tags = version_tags(2)
    assert tags["promotion"] == "challenger" and tags["gate_p_value"] == "0.5"
    assert tags["gate_challenger_only"] == "2" and tags["gate_champion_only"] == "0"
    assert float(tags["gate_low"]) == pytest.approx(g["low"])
    assert tags["gate_test_sha256"] == tags["test_sha256"] and tags["gate_champion_version"] == "1"
    description = mlflow.MlflowClient().get_model_version(NAME, "2").description
    assert description.startswith("Not promoted: v1 stays champion. On the same 40 test images")
    assert "2 images only this version classifies right, 0 only the champion" in description
    assert description.endswith("The lower bound is not above 0: not shown better.")


def test_a_clearly_better_model_is_promoted_and_the_history_survives(candidate):
    candidate(0.40)
    run_register(candidate.params)
    candidate(0.90)  # 20 more of 40 images right, none fewer
    result = run_register(candidate.params)

    assert result["version"] == 2 and result["promoted"] is True
    assert aliases() == {"champion": "2", "challenger": "2"}
    g = result["gate"]
    assert g["gain"] == pytest.approx(0.5) and 0.3 < g["low"] < 0.5 < g["high"] <= 0.7
    assert g["p_value"] == pytest.approx(2 * 0.5**20)  # 20 of 20 discordant images
    assert result["reason"].startswith(
        "promoted: test accuracy 0.9000 vs champion v1 0.4000, gain +0.5000, 95% interval ["
    )
    assert version_tags(1)["replaced_by"] == "2" and version_tags(2)["promotion"] == "champion"
    description = mlflow.MlflowClient().get_model_version(NAME, "2").description
    assert description.startswith("Promoted to champion over v1.")
    assert description.endswith("The lower bound is above 0: better beyond noise.")


def test_a_worse_model_stays_challenger(candidate):
    candidate(0.90)
    run_register(candidate.params)
    candidate(0.40)
    result = run_register(candidate.params)
    assert result["promoted"] is False and result["gate"]["high"] < 0
    assert aliases() == {"champion": "1", "challenger": "2"}


def test_a_champion_tested_on_other_images_is_rescored(candidate):
    """New data: the champion's logged predictions are for another test split, so its model
    is scored again on the challenger's test images before the comparison."""
    candidate(0.9)
    run_register(candidate.params)
    shutil.rmtree("data/prepared")
    write_prepared(Path("data/prepared"), test_seed=7)
    x, y = load_split(Path("data/prepared"), "test")
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}/1").unwrap_python_model().model
    champion_accuracy = float((champion.predict(x, verbose=0).argmax(axis=1) == y).mean())

    candidate(right=np.ones(len(y), bool))  # every new test image right
    result = run_register(candidate.params)

    g = result["gate"]
    assert g["champion_rescored"].startswith("it was tested on other images (sha256 ")
    assert g["champion"] == pytest.approx(champion_accuracy)  # not the 0.9 of its own test set
    assert g["test_sha256"] == gate.test_digest(x, y) != version_tags(1)["test_sha256"]
    assert g["challenger_only"] == round((1 - champion_accuracy) * len(y))
    assert version_tags(2)["gate_champion_rescored"] == g["champion_rescored"]


def test_stale_predictions_are_refused(candidate, run_module):
    candidate(0.6)
    shutil.rmtree("data/prepared")
    write_prepared(Path("data/prepared"), test_seed=7)
    result = run_module(
        "cifar10_mlops.stages.register", "--params", str(candidate.params), *stage_args("register")
    )
    assert result.returncode == 1
    assert error_line(result) == (
        "error: reports/evaluate/test_predictions.npz was made on other test images than "
        "data/prepared's: rerun the evaluate stage"
    )
    assert not Path("reports/registry.json").exists()


def test_rerun_for_the_same_training_run_adds_no_version(candidate):
    candidate(0.6)
    first = run_register(candidate.params)
    again = run_register(candidate.params)
    assert again["version"] == first["version"] == 1
    assert again["promoted"] is True and again["reason"] == "already champion"
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")) == 1


def test_loss_is_minimised_and_metric_and_margin_come_from_params(candidate, params_file):
    candidate(0.6, confidence=0.99)  # confidently wrong on 16 images
    run_register(candidate.params)
    candidate(0.6, confidence=0.5)  # the same classes, hedged: a much lower log loss
    result = run_register(params_file(**{"register.metric": "loss"}))
    assert result["promoted"] is True and result["metric"] == "test/loss"
    g = result["gate"]
    assert g["champion"] > g["challenger"] and g["gain"] == pytest.approx(
        g["champion"] - g["challenger"]
    )
    assert g["low"] > 0 and aliases()["champion"] == "2"
    # the same gain, but the margin asks for more than the interval gives
    candidate(0.6, confidence=0.3)
    strict = run_register(params_file(**{"register.metric": "loss", "register.min_delta": 5.0}))
    assert strict["promoted"] is False and strict["gate"]["min_delta"] == 5.0


def test_weighted_f1_is_compared_on_the_same_images(candidate, params_file):
    candidate(0.40)
    run_register(candidate.params)
    candidate(0.90)
    result = run_register(params_file(**{"register.metric": "f1_weighted"}))
    g = result["gate"]
    assert result["promoted"] is True and g["metric"] == "f1_weighted"
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert g["challenger"] == pytest.approx(metrics["f1_weighted"])
    assert g["low"] > 0


def test_champion_loads_as_pyfunc_and_keras_and_takes_raw_uint8(candidate):
    candidate(0.6)
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
    result = run_module(
        "cifar10_mlops.stages.register", "--params", str(params), *stage_args("register")
    )
    assert result.returncode == 1
    assert error_line(result) == (f"error: {params}: register.min_delta: must be >= 0, got -0.1")
    cfg = yaml.safe_load(Path(params).read_text())
    assert load_params(params_file()).register.model_name == cfg["register"]["model_name"]
