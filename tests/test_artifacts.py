"""Artifacts are checked against the digests recorded in the tracking database before they run:
whoever can write the artifact store (the S3 key the DVC remote shares) cannot make predict,
serve, the gate or checkout run other code or restore another state."""

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest

from cifar10_mlops.core import artifacts
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops import checkout
from cifar10_mlops.serving import predict
from cifar10_mlops.stages import register
from helpers import stage_args, write_prepared

NAME = "cifar10-cnn"
# What planted code does when MLflow loads the model: leave a file behind.
PLANTED = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


def run_register(params: Path) -> dict:
    register.main(["--params", str(params), *stage_args("register")])
    return json.loads(Path("reports/registry.json").read_text())


def local(uri: str) -> Path:
    return Path(urlparse(uri).path)


def model_folder(version: int = 1) -> Path:
    """The artifact store's folder of the logged model behind version `version`."""
    client = mlflow.MlflowClient()
    model_id = artifacts.model_id_of(client.get_model_version(NAME, str(version)))
    return local(client.get_logged_model(model_id).artifact_location)


def plant_code(folder: Path, marker: Path) -> None:
    """Append code to the pyfunc file MLflow runs on load (models from code)."""
    [code] = [p for p in folder.rglob("*.py")]
    code.write_text(code.read_text() + PLANTED.format(marker=str(marker)))


def test_the_digest_covers_every_files_path_and_bytes(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    first = artifacts.tree_sha256(tree)
    assert artifacts.tree_sha256(tree) == first
    (tree / "sub" / "b.txt").write_text("c")
    changed = artifacts.tree_sha256(tree)
    (tree / "sub" / "b.txt").rename(tree / "b.txt")
    renamed = artifacts.tree_sha256(tree)
    (tree / "extra").write_text("")
    assert len({first, changed, renamed, artifacts.tree_sha256(tree)}) == 4
    os.symlink("/etc/passwd", tree / "link")
    with pytest.raises(PipelineError, match="link: not a regular file"):
        artifacts.tree_sha256(tree)


def test_evaluate_records_the_stored_models_digest(candidate):
    run_id = candidate(0.6)
    client = mlflow.MlflowClient()
    [model] = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'", output_format="list",
    )  # fmt: skip
    params = artifacts.logged_model_params(client, model.model_id)
    stored = local(model.artifact_location)
    assert params[artifacts.MODEL_PARAM] == artifacts.tree_sha256(stored)
    npz = Path("reports/evaluate/test_predictions.npz")
    assert params[artifacts.PREDICTIONS_PARAM] == artifacts.digest(npz)


def test_predict_refuses_a_model_whose_code_was_replaced_and_runs_none_of_it(candidate, tmp_path):
    candidate(0.6)
    run_register(candidate.params)
    model, source = predict.load_resolved(f"models:/{NAME}@champion")  # as registered: loads
    assert source.version == 1 and model.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape
    # MLflow's own loader writes a note (registered_model_meta) into a local store's folder
    mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert predict.load_resolved(f"models:/{NAME}/1")[1].version == 1
    marker = tmp_path / "planted-code-ran"
    plant_code(model_folder(1), marker)
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1", f"models:/{source.model_id}"):
        with pytest.raises(PipelineError, match="was changed since; refusing to use it"):
            predict.load_resolved(uri)
    run = mlflow.MlflowClient().get_model_version(NAME, "1").run_id
    with pytest.raises(PipelineError, match="was changed since"):
        predict.load_resolved(f"runs:/{run}/model")
    assert not marker.exists()


def test_a_model_without_a_recorded_digest_is_refused(candidate, monkeypatch):
    """Registered by code that recorded nothing (an older version of this project)."""
    monkeypatch.setattr("cifar10_mlops.stages.evaluate.record_digests", lambda *a: None)
    candidate(0.6)
    run_register(candidate.params)
    with pytest.raises(PipelineError, match="no digest of models:/m-.* was recorded"):
        predict.load_resolved(f"models:/{NAME}@champion")


def test_the_gate_rescores_no_changed_champion(candidate, tmp_path):
    """The champion's logged test predictions replaced: they are ignored, and the champion's
    model is scored again, provided it is the model that was logged; a replaced model stops
    register with one line, before any of its code runs."""
    candidate(0.9)
    run_register(candidate.params)
    run = mlflow.MlflowClient().get_model_version(NAME, "1").run_id
    logged = local(mlflow.get_run(run).info.artifact_uri) / "evaluation/test_predictions.npz"
    shutil.copy(logged, tmp_path / "kept.npz")
    with np.load(logged) as npz:
        forged = {k: npz[k] for k in npz.files}
    forged["probabilities"] = np.roll(forged["probabilities"], 1, axis=1)  # all wrong
    np.savez(logged, **forged)
    candidate(0.5)
    result = run_register(candidate.params)
    assert result["gate"]["champion_rescored"].startswith("its run logged no ")
    assert result["gate"]["champion"] < 0.5  # the untrained champion, not its 0.9

    champion = mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version
    marker = tmp_path / "planted-code-ran"
    plant_code(model_folder(int(champion)), marker)
    shutil.rmtree("data/prepared")
    write_prepared(Path("data/prepared"), test_seed=7)  # new test images: a re-scoring
    candidate(0.5)
    with pytest.raises(PipelineError, match=f"the champion v{champion}: .* was changed since"):
        run_register(candidate.params)
    assert not marker.exists()


def test_checkout_refuses_a_pipeline_state_that_was_replaced(candidate, tmp_path):
    candidate(0.6)
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    run_register(candidate.params)
    version = mlflow.MlflowClient().get_model_version(NAME, "1")
    where = version.tags[register.PIPELINE_TAG]
    assert re.fullmatch(rf"runs:/{version.run_id}/pipeline/{NAME}/v1/[0-9a-f]{{12}}", where)
    state = checkout.fetch_state(version, tmp_path / "as-logged")
    assert (state / "params.yaml").read_bytes() == candidate.params.read_bytes()
    run_folder = local(mlflow.get_run(version.run_id).info.artifact_uri)
    stored = run_folder / where.split("/", 2)[2] / "params.yaml"  # runs:/<id>/<folder>
    stored.write_text(stored.read_text().replace("epochs:", "epochs: 99 #"))
    with pytest.raises(PipelineError, match=f"{NAME} v1: .* was changed since"):
        checkout.fetch_state(version, tmp_path / "replaced")


def test_registering_a_run_again_keeps_each_state_and_its_record(candidate, params_file):
    """register rerun alone with other register params registers the same run again: as the
    same version (the state it points to is the new one) or, under another name, as another;
    every state keeps its own folder and record."""
    candidate(0.6)
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    run_register(candidate.params)
    run_id = json.loads(Path("models/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    first = client.get_model_version(NAME, "1").tags[register.PIPELINE_TAG]
    stricter = params_file(**{"register.min_delta": 0.01})
    assert run_register(stricter)["version"] == 1  # the same version, another state
    again = client.get_model_version(NAME, "1")
    assert again.tags[register.PIPELINE_TAG] != first
    assert (
        "min_delta: 0.01" in (checkout.fetch_state(again, Path("s1")) / "params.yaml").read_text()
    )
    result = run_register(params_file(**{"register.model_name": "other"}))
    assert result["model_name"] == "other" and result["run_id"] == run_id
    states = [k for k in client.get_run(run_id).data.params if k.startswith(artifacts.STATE_PARAM)]
    assert len(states) == 3
    assert checkout.fetch_state(client.get_model_version("other", "1"), Path("s2")).is_dir()
