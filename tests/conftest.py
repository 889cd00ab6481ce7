"""Tiny synthetic CIFAR-10 archives in both layouts, and params shrunk to seconds.

The images are random noise with a class-dependent mean colour, so that one epoch of
training on a few dozen images already does better than chance.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar10_mlops.dataset import CLASSES

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def stage_args(stage: str) -> list[str]:
    """The arguments dvc.yaml passes to a stage (after `python -m <module>`), paths included."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    return shlex.split(cmd)[3:]


def make_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.uint8), per_class)
    colours = rng.integers(30, 225, size=(len(CLASSES), 3))
    noise = rng.integers(-30, 30, size=(len(labels), 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_python_archive(path: Path, train_per_class: int = 10, test_per_class: int = 4) -> Path:
    """The official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    x_train, y_train = make_images(train_per_class, seed=1)
    x_test, y_test = make_images(test_per_class, seed=2)
    order = np.random.default_rng(0).permutation(len(y_train))
    x_train, y_train = x_train[order], y_train[order]

    def batch(x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        return pickle.dumps(
            {b"data": rows, b"labels": y.tolist(), b"batch_label": b"synthetic"}, protocol=2
        )

    with tarfile.open(path, "w:gz") as tar:
        for i, (xs, ys) in enumerate(
            zip(np.array_split(x_train, 5), np.array_split(y_train, 5)), 1
        ):
            add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", batch(xs, ys))
        add_bytes(tar, "cifar-10-batches-py/test_batch", batch(x_test, y_test))
        meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
    return path


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def write_image_archive(
    path: Path,
    train_per_class: int = 10,
    test_per_class: int = 4,
    fmt: str = "PNG",
    root: str = "cifar10",
) -> Path:
    """The image-folder layout: <root>/{train,test}/<class>/NNNN.<png|jpg>."""
    suffix = "png" if fmt == "PNG" else "jpg"
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class, seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
            x, y = make_images(per_class, seed)
            for i, (image, label) in enumerate(zip(x, y)):
                add_bytes(
                    tar, f"{root}/{split}/{CLASSES[label]}/{i:04d}.{suffix}", encode(image, fmt)
                )
    return path


@pytest.fixture
def python_archive(tmp_path: Path) -> Path:
    return write_python_archive(tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture
def image_archive(tmp_path: Path) -> Path:
    return write_image_archive(tmp_path / "cifar10-png.tar.gz")


def tiny_params(**overrides) -> dict:
    """The repository's params.yaml shrunk to seconds: one epoch of a small baseline (Adam,
    the default cosine schedule and augmentation), and a Hyperband search of 5 trials (7
    epochs in all) around it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"].update(checksum=None, retries=1)
    params["tune"].update(
        max_epochs=2,
        factor=2,
        hyperband_iterations=1,
        train_per_class=None,
        max_mflops=None,
        space={
            "conv_1_filters": {"min": 8, "max": 16, "step": 8},
            "conv_2_filters": {"min": 8, "max": 16, "step": 8},
            "dense_units": {"min": 16, "max": 32, "step": 16},
            "learning_rate": {"min": 0.0005, "max": 0.005, "sampling": "log"},
            "optimizer": {"values": ["adam", "sgd"]},
        },
    )
    params["train"].update(
        architecture="baseline",
        optimizer="adam",  # the tiny space's optimizers and learning rates
        learning_rate=0.001,
        conv_1_filters=8,
        conv_2_filters=8,
        dense_units=16,
        batch_size=16,
        epochs=1,
        dropout=0.0,
    )
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


@pytest.fixture
def params_file(tmp_path: Path):
    """Write tiny params (with dotted-key overrides) and return the file's path."""

    def write(**overrides) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch copy of the repository's tracked files, as its own git repo."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    dest = tmp_path / "project"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


@pytest.fixture
def pipeline(project, tmp_path, monkeypatch):
    """The project copy with tiny params, reading a tiny JPEG archive via CIFAR10_SOURCE."""
    archive = write_image_archive(tmp_path / "cifar10-jpg.tar.gz", fmt="JPEG")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.setenv("CIFAR10_SOURCE", str(archive))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project


@pytest.fixture
def run_module():
    """Run `python -m <module> <args>` the way dvc.yaml does; returns the CompletedProcess."""
    import sys

    def run(module: str, *args: str, cwd: Path | None = None, env: dict | None = None):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=300,
        )

    return run


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """data/prepared as the prepare stage writes it, from 20 images per class."""
    from cifar10_mlops.prepare import split_data
    from cifar10_mlops.splits import write_splits

    splits = split_data(
        make_images(20, seed=1),
        make_images(4, seed=2),
        val_fraction=0.25,
        train_per_class=None,
        test_per_class=None,
        seed=0,
    )
    out = tmp_path / "data" / "prepared"
    write_splits(
        splits,
        out,
        {
            "source": "synthetic",
            "source_sha256": "ab" * 32,
            "source_md5": "cd" * 16,
            "images": {k: len(v[1]) for k, v in splits.items()},
        },
    )
    return out


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch) -> Path:
    """Run in tmp_path with the default (embedded) MLflow store, as `dvc repro` would."""
    monkeypatch.chdir(tmp_path)
    # MLflow exports the URI it is given; set-then-delete makes teardown remove it again.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


@pytest.fixture
def candidate(in_project, params_file):
    """A function that makes models/{model.keras,run.json} and reports/metrics.json as train
    and evaluate do, for an untrained model with the test `accuracy` given, logging to the
    embedded store of in_project; it returns the run id."""
    import mlflow

    from cifar10_mlops import evaluate, tracking
    from cifar10_mlops.model import build_model

    params = params_file()
    experiment_id = tracking.configure("cifar10-cnn")

    def make(accuracy: float, loss: float = 1.0) -> str:
        model = build_model(
            "baseline", conv_1_filters=4, conv_2_filters=4, dense_units=8, dropout=0.0
        )
        Path("models").mkdir(exist_ok=True)
        model.save("models/model.keras")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_metric("best_val_accuracy", accuracy + 0.01)
            mlflow.set_tag("data_sha256", "ab" * 32)
        run_info = {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": tracking.tracking_uri(),
        }
        Path("models/run.json").write_text(json.dumps(run_info))
        metrics = {"accuracy": accuracy, "f1_weighted": accuracy - 0.01, "f1_macro": 0.5}
        metrics.update(loss=loss, per_class={})
        Path("reports").mkdir(exist_ok=True)
        Path("reports/metrics.json").write_text(json.dumps(metrics))
        evaluate.log_to_mlflow(run_info, metrics, Path("models/model.keras"), [])
        return run.info.run_id

    make.params = params
    return make
