import json
import re
import tarfile

import numpy as np
import pytest

from cifar10_mlops.stages.download import download
from cifar10_mlops.core.splits import load_split
from helpers import add_bytes, encode, make_images, write_image_archive


@pytest.fixture
def raw(python_archive, tmp_path):
    out = tmp_path / "raw"
    download(str(python_archive), None, out, retries=1, timeout=5, deadline=60)
    return out


def prepare_cli(run_module, params, raw, tmp_path):
    return run_module(
        "cifar10_mlops.stages.prepare",
        "--params",
        str(params),
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "prepared"),
        "--reports",
        str(tmp_path / "reports"),
    )


def test_stratified_validation_split_leaves_test_untouched(raw, tmp_path, params_file, run_module):
    result = prepare_cli(run_module, params_file(**{"prepare.val_fraction": 0.2}), raw, tmp_path)
    assert result.returncode == 0, result.stderr
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = (
        load_split(tmp_path / "prepared", s) for s in ("train", "val", "test")
    )
    assert x_tr.dtype == np.uint8 and x_tr.shape[1:] == (32, 32, 3)
    assert (len(y_tr), len(y_val), len(y_te)) == (80, 20, 40)
    assert np.bincount(y_val, minlength=10).tolist() == [2] * 10  # stratified
    train_rows = {row.tobytes() for row in x_tr}
    assert not any(row.tobytes() in train_rows for row in x_val)
    expected_test, _ = make_images(4, seed=2)  # the fixture's test images, in order
    assert np.array_equal(x_te, expected_test)
    counts = json.loads((tmp_path / "reports" / "class_counts.json").read_text())
    assert counts["val"]["cat"] == 2 and counts["test"]["cat"] == 4
    assert (tmp_path / "reports" / "samples.png").stat().st_size > 10_000
    lineage = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert lineage["images"] == {"train": 80, "val": 20, "test": 40}
    assert lineage["source_sha256"] == json.loads((raw / "manifest.json").read_text())["sha256"]


def test_subset_for_quick_runs(raw, tmp_path, params_file, run_module):
    params = params_file(
        **{"prepare.train_per_class": 5, "prepare.test_per_class": 2, "prepare.val_fraction": 0.2}
    )
    assert prepare_cli(run_module, params, raw, tmp_path).returncode == 0
    assert len(load_split(tmp_path / "prepared", "train")[1]) == 40
    assert len(load_split(tmp_path / "prepared", "val")[1]) == 10
    assert np.bincount(load_split(tmp_path / "prepared", "test")[1]).tolist() == [2] * 10


def test_split_too_small_for_ten_classes(raw, tmp_path, params_file, run_module):
    result = prepare_cli(run_module, params_file(**{"prepare.val_fraction": 0.05}), raw, tmp_path)
    assert result.returncode == 1
    assert "leaves a split with fewer images than the 10 classes" in result.stderr
    assert not (tmp_path / "prepared").exists()


def image_raw(tmp_path, bad_name: str, bad_bytes: bytes):
    archive = write_image_archive(tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as dst:
        with tarfile.open(archive) as src:
            for m in src.getmembers():
                dst.addfile(m, src.extractfile(m))
        add_bytes(dst, bad_name, bad_bytes)
    out = tmp_path / "raw"
    download(str(tmp_path / "b.tar.gz"), None, out, retries=1, timeout=5, deadline=60)
    return out


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            b"\xff\xd8\xff\xe0 not really a jpeg",
            r"corrupt image .*raw/b\.tar\.gz:cifar10/train/dog/bad\.jpg",
        ),
        (
            encode(np.zeros((48, 48, 3), np.uint8), "PNG"),
            r"wrong-sized image .*bad.jpg: expected 32x32 RGB, got \(48, 48\) RGB",
        ),
        (
            encode(np.zeros((32, 32), np.uint8), "PNG"),
            r"wrong-sized image .*bad.jpg: expected 32x32 RGB, got \(32, 32\) L",
        ),
    ],
)
def test_bad_images_stop_prepare_with_a_clear_error(
    tmp_path, params_file, run_module, payload, message
):
    raw = image_raw(tmp_path, "cifar10/train/dog/bad.jpg", payload)
    result = prepare_cli(run_module, params_file(), raw, tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert re.search(message, line), line
    assert not (tmp_path / "prepared").exists()


def test_counts_that_disagree_with_the_download_manifest(raw, tmp_path, params_file, run_module):
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["counts"]["train"]["cat"] = 11
    (raw / "manifest.json").write_text(json.dumps(manifest))
    result = prepare_cli(run_module, params_file(), raw, tmp_path)
    assert result.returncode == 1
    assert (
        "train: decoded class counts" in result.stderr
        and "rerun the download stage" in result.stderr
    )
    assert not (tmp_path / "prepared").exists()


def test_prepare_without_download(tmp_path, params_file, run_module):
    result = prepare_cli(run_module, params_file(), tmp_path / "missing", tmp_path)
    assert result.returncode == 1
    assert "manifest.json not found: run the download stage first" in result.stderr
