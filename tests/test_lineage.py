"""What ties an MLflow run to the pipeline state that made it (core/lineage.py): the data's DVC
hash, run names a person can tell apart, and metrics as the decimals they stand for."""

import re

import numpy as np

from cifar10_mlops.core import lineage


def folder(path, content: bytes):
    (path / "sub").mkdir(parents=True)
    (path / "train.npz").write_bytes(content)
    (path / "sub" / "manifest.json").write_text("{}")
    return path


def test_the_data_hash_is_dvcs_folder_hash_of_the_contents(tmp_path):
    a = lineage.dvc_hash(folder(tmp_path / "a", b"images"))
    assert re.fullmatch(r"[0-9a-f]{32}\.dir", a)  # as dvc.lock records a folder
    assert lineage.dvc_hash(folder(tmp_path / "b", b"images")) == a  # wherever it lies
    assert lineage.dvc_hash(folder(tmp_path / "c", b"imageS")) != a


def test_run_names_show_stage_recipe_commit_and_time():
    name = lineage.run_name("train", "fast-11ep", "0b0cda9e1f" + "0" * 30 + "-dirty")
    assert re.fullmatch(r"train-fast-11ep-0b0cda9\+-\d{4}T\d{4}", name), name
    assert lineage.run_name("tune", "x", "unknown").startswith("tune-x-nogit-")


def test_float32_metrics_are_logged_as_the_decimals_keras_meant():
    logged = lineage.rounded({"val_accuracy": np.float32(0.588), "loss": 1.2345678901})
    assert logged == {"val_accuracy": 0.588, "loss": 1.234568}
