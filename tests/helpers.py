"""What the tests share besides fixtures (conftest.py): tiny synthetic CIFAR-10 archives in
both layouts, params shrunk to seconds, and the git, DVC and subprocess idioms tests run.

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
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from filelock import FileLock
from PIL import Image

from cifar10_mlops.core.dataset import CLASSES

REPO = Path(__file__).resolve().parents[1]


def place_store(template: Path, database: Path) -> Path:
    """A copy of the migrated store at `database` (for `sqlite:///<database>`)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)
    return database


def forget_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset MLFLOW_TRACKING_URI (the stages then log to the embedded store) so that it stays
    unset after the test: MLflow exports any URI it is given, and set-then-delete makes the
    monkeypatch's teardown remove that export too."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


def bench_module():
    """benchmarks/bench.py as a module (it is a script, not part of the package); loading it
    puts benchmarks/ on sys.path, as running it as a script does, for its `sections`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def bench_section(name: str):
    """benchmarks/sections/<name>.py, the module of one of bench.py's sections, as bench.py
    imports it."""
    import importlib

    bench_module()  # puts benchmarks/ on sys.path, where bench.py finds `sections`
    return importlib.import_module(f"sections.{name}")


def stage_args(stage: str) -> list[str]:
    """The arguments dvc.yaml passes to a stage (after `python -m <module>`), paths included."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    return shlex.split(cmd)[3:]


def make_images(
    per_class: int, seed: int, *, like: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of a colour per class, plus noise. With `like`, the class colours of those of
    seed `like` and fresh noise: more images of the same distribution."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.uint8), per_class)
    colours = rng.integers(30, 225, size=(len(CLASSES), 3))
    if like is not None:
        colours = np.random.default_rng(like).integers(30, 225, size=(len(CLASSES), 3))
    noise = rng.integers(-30, 30, size=(len(labels), 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def evil_tar(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar10/train/cat/0000.png", b"x")
        tar.addfile(member, io.BytesIO(b"owned") if member.isfile() else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 5
    return info


def link_member(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def zeros_tar(path: Path, sizes: dict[str, int]) -> Path:
    """A tar.gz of members full of zeros (a few KB compressed per 100 MB)."""

    class Zeros(io.RawIOBase):
        def __init__(self, size):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in sizes.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


def write_python_archive(
    path: Path, train_per_class: int = 10, test_per_class: int = 4, drop_test_class: int = -1
) -> Path:
    """The official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta};
    without the test images of class `drop_test_class`, when one is named."""
    x_train, y_train = make_images(train_per_class, seed=1)
    x_test, y_test = make_images(test_per_class, seed=2)
    kept = y_test != drop_test_class
    x_test, y_test = x_test[kept], y_test[kept]
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


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last line a command wrote to stderr: where a stage's one-line error goes, after
    whatever TensorFlow logged before it."""
    return result.stderr.strip().splitlines()[-1]


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
            "conv_3_filters": None,
            "dense_units": {"min": 16, "max": 32, "step": 16},
            "learning_rate": {"min": 0.0005, "max": 0.005, "sampling": "log"},
            "muon_learning_rate": None,
            "weight_decay": None,
            "label_smoothing": None,
            "optimizer": {"values": ["adam", "sgd"]},
        },
    )
    params["monitor"].update(window=40, min_images=20, permutations=999)
    params["train"].update(
        architecture="baseline",
        optimizer="adam",  # the tiny space's optimizers and learning rates
        learning_rate=0.001,
        weight_decay=0.0005,
        conv_1_filters=8,
        conv_2_filters=8,
        conv_3_filters=None,
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


def copy_project(dest: Path, store: Path) -> Path:
    """A copy of the repository's files (tracked, or untracked and not ignored) in `dest`, as
    a git repository of its own, with `store` (migrated) as its embedded MLflow store."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    place_store(store, dest / "mlruns" / "mlflow.db")
    return dest


def git(folder: Path, *args: str) -> str:
    """`git <args>` in `folder` as a test user; its output. Fails the test on an error."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=folder, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def git_commit_all(folder: Path, message: str) -> None:
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", message)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`cifar10-mlops <args>` in `cwd`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def ran(result: subprocess.CompletedProcess | str) -> list[str]:
    """The stages `dvc repro` or `dvc exp run` ran, from its output."""
    output = result if isinstance(result, str) else result.stdout
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def deploy_to_pool(project: Path, env: dict, pool: str = "cpu") -> str:
    """`python -m flows.deploy --pool POOL` in `project` with `env` (a Prefect server's);
    fails the test unless it succeeds, and returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "--pool", pool], cwd=project, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dvc <args>` in `project` with the venv's `python` first on PATH, as `make` runs it;
    fails the test unless it succeeds."""
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "dvc"), *args], cwd=project, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def relocate(source: Path, dest: Path) -> Path:
    """Copy a project to `dest` and point its MLflow store's artifact paths at the copy
    (`cifar10-mlops relocate-store`), so that nothing the copy logs lands in `source`."""
    from cifar10_mlops.ops.relocate import relocate as relocate_store

    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    relocate_store(dest / "mlruns" / "mlflow.db")
    return dest


def write_prepared(out: Path, test_seed: int = 2, per_class: int = 20) -> Path:
    """Write a prepared folder (as the prepare stage does) from `per_class` images per class
    (a quarter of them for validation), and a test split of 4 per class drawn with
    `test_seed`."""
    from cifar10_mlops.stages.prepare import split_data
    from cifar10_mlops.core.splits import write_splits

    splits = split_data(
        make_images(per_class, seed=1),
        make_images(4, seed=test_seed),
        val_fraction=0.25,
        train_per_class=None,
        test_per_class=None,
        seed=0,
    )
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


def make_candidate(
    experiment_id: str, accuracy: float = 0.5, *, right=None, confidence=0.9, drift_reference=True
) -> str:
    """models/{model.keras,run.json}, reports/metrics.json and
    reports/evaluate/test_predictions.npz as train and evaluate make them, in the working
    directory, logged to `experiment_id`; returns the run id. The model is untrained; its test
    predictions are made up: the first round(accuracy x n) test images classified right (or
    the images `right`, a boolean per image), the rest as the next class, each with
    probability `confidence`. The metrics are computed from them as evaluate computes its own.
    Without `drift_reference`, it has none, as a model evaluated before they existed."""
    import keras
    import mlflow

    from cifar10_mlops.core import tracking
    from cifar10_mlops.core.splits import load_split
    from cifar10_mlops.monitoring import reference
    from cifar10_mlops.stages import evaluate
    from cifar10_mlops.training import gate
    from cifar10_mlops.training.model import build_model

    data = Path("data/prepared")
    if not data.is_dir():
        write_prepared(data)
    x, y = test = load_split(data, "test")
    if right is None:
        right = np.arange(len(y)) < round(accuracy * len(y))
    predicted = np.where(right, y, (y + 1) % len(CLASSES))
    probs = np.full((len(y), len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1))
    probs[np.arange(len(y)), predicted] = confidence
    metrics = evaluate.score(y, probs)
    # the same weights every time: a drift test on its embeddings has one answer, not one that
    # a clean window fails by chance (alpha) in one run of a hundred
    keras.utils.set_random_seed(0)
    model = build_model("baseline", conv_1_filters=4, conv_2_filters=4, dense_units=8, dropout=0.0)
    Path("models").mkdir(exist_ok=True)
    model.save("models/model.keras")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("val/best_accuracy", metrics["accuracy"] + 0.01)
        mlflow.set_tag("data_sha256", "ab" * 32)
    run_info = {
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking.tracking_uri(),
    }
    Path("models/run.json").write_text(json.dumps(run_info))
    Path("reports").mkdir(exist_ok=True)
    Path("reports/metrics.json").write_text(json.dumps(metrics))
    predictions = Path("reports/evaluate/test_predictions.npz")
    predictions.parent.mkdir(parents=True, exist_ok=True)
    gate.save_predictions(predictions, gate.Predictions(y, probs, gate.test_digest(x, y)))
    files = [predictions]
    if drift_reference:  # as evaluate saves it, from the validation split
        path = predictions.parent / reference.FILE
        reference.save(path, reference.build(model, *load_split(data, "val"), 50, 0, 50))
        files.append(path)
    evaluate.log_to_mlflow(run_info, metrics, Path("models/model.keras"), files, test, data)
    return run.info.run_id


def once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """`<shared temp>/<name>`, made by `make(path)` by the first xdist worker that asks; the
    others wait for it. Without xdist, the session's own temp folder. Made in place (what it
    records, such as MLflow's artifact paths, names its final path); `<name>.done` marks it
    complete, so a half-made one is made again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    path, done = root / name, root / f"{name}.done"
    with FileLock(f"{path}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            done.touch()
    return path


def tune_cli(params_file, **overrides) -> None:
    """The `tune` stage in this process, on tiny params with `overrides`, as dvc.yaml runs it."""
    from cifar10_mlops.stages.tune import __main__ as tune

    tune.main(["--params", str(params_file(**overrides)), *stage_args("tune")])


def runs(**filters) -> list:
    """The runs of the cifar10-cnn experiment whose tags have these values."""
    import mlflow

    from cifar10_mlops.core import tracking

    tracking.connect()  # this test's store, also when the stage under test never opened it
    found = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    return [r for r in found if all(r.data.tags.get(k) == v for k, v in filters.items())]
