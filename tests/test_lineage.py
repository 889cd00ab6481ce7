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


def test_run_names_show_stage_recipe_and_time_in_25_characters():
    name = lineage.run_name("train", "fast-11ep")
    assert re.fullmatch(r"train-fast-11ep-\d{4}-\d{4}", name) and len(name) <= 25, name


def test_each_split_has_its_own_digest_and_class_counts():
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.array([0, 0, 3, 9])
    digest = lineage.split_digest(x, y)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert lineage.split_digest(x, y[::-1].copy()) != digest  # same images, other labels
    changed = x.copy()
    changed[0, 0, 0, 0] = 1
    assert lineage.split_digest(changed, y) != digest
    assert lineage.class_counts(y) == (
        "airplane 2, automobile 0, bird 0, cat 1, deer 0, dog 0, frog 0, horse 0, ship 0, truck 1"
    )


def test_float32_metrics_are_logged_as_the_decimals_keras_meant():
    logged = lineage.rounded({"val_accuracy": np.float32(0.588), "loss": 1.2345678901})
    assert logged == {"val_accuracy": 0.588, "loss": 1.234568}
