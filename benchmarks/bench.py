"""Training speed of this project against the study's notebook, measured side by side.

    .venv/bin/python benchmarks/bench.py            # the default sections (SECTIONS)
    .venv/bin/python benchmarks/bench.py --only throughput tracking

1. throughput: images/s in steady state (warm-up steps excluded) of the study's pipeline
   (ImageDataGenerator.flow, batch 64, Keras' layers, Adam) and of the `train` stage's
   (data.make_dataset and network.compile_model at params.yaml's settings), both training the
   same network, the study's baseline CNN; alternated three times, medians and their ratio.
2. time_to_accuracy: the `train` stage's training with params.yaml as it stands, scored on
   the test split after every epoch as the saved model scores (test-time augmentation
   included; scoring time excluded): wall time until the test accuracy first reaches the
   study's 0.8015, 0.90 and 0.93, and the final accuracy. Needs data/prepared.
3. study_speed: the study's accuracy the way airbench times its runs, a whole training that
   ends at or above it: STUDY_SPEED (airbench94's recipe at 32/64/128 for 4 epochs; the
   rest, augmentation and seed, from params.yaml, not --set), its training time and final
   test accuracy, scored as time_to_accuracy scores. Needs data/prepared.
4. tracking: the same short training with and without MLflow logging (a run, its params,
   per-epoch metrics, into a throwaway sqlite store), alternated; the ratio of the medians.
5. noop_repro: `dvc repro` with nothing to do, in this checkout (needs an up-to-date pipeline).
6. determinism: the `train` stage's training at params.yaml's settings with TensorFlow's op
   determinism (params.yaml `deterministic: true`, the default) and without, each in a
   fresh process (the switch is per process), alternated --repeats times on --images
   training images: steady-state seconds per epoch of the whole training split (the first
   10 steps excluded), every reading, the ratio of each mode's fastest, and whether the runs
   of each mode ended on the same weights (sha256).
7. ablation (not in the default run): the default training with one airbench ingredient
   switched off at a time (ABLATIONS), --seeds seeds each: final test accuracy, mean and
   spread, as airbench's README reports them. Needs data/prepared; about 12 trainings.
8. gpu (not in the default run): time_to_accuracy of the airbench94 preset (AIRBENCH94,
   the same values as `make airbench`) on the first GPU, mixed precision: the issue's
   "0.94 in 30 s on one H100" check. Needs data/prepared and a GPU.

The table is printed and written, with the machine's description, to
benchmarks/results/<date>-<host>.json. Without data/prepared, throughput and tracking use
random images of CIFAR-10's shape (speed does not depend on pixel values).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from cifar10_mlops.core.files import write_json  # noqa: E402
from cifar10_mlops.ops import runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY_ACCURACY = 0.8015  # the study's test accuracy
STUDY_BATCH = 64
TARGETS = (STUDY_ACCURACY, 0.90, 0.93, 0.94)
SECTIONS = (
    "throughput", "time_to_accuracy", "study_speed", "tracking", "noop_repro", "determinism",
)  # fmt: skip
EXTRA_SECTIONS = ("ablation", "gpu")
# airbench94's recipe (legacy/airbench94.py) in params.yaml's terms; `make airbench` sets the
# same values (tests/test_bench.py checks).
AIRBENCH94 = {
    "architecture": "fast", "conv_1_filters": 64, "conv_2_filters": 256,
    "conv_3_filters": 256, "batch_size": 1024, "epochs": 10, "optimizer": "airbench",
    "learning_rate": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bias_lr_scale": 64.0,
    "lr_schedule": "triangle", "warmup_epochs": 2.3, "lr_start": 0.2, "lr_end": 0.07,
    "label_smoothing": 0.2, "dirac_init": True, "whiten_bias_epochs": 3, "lookahead": True,
    "tta_level": 2, "head": "airbench94", "dropout": 0.0, "early_stopping_patience": None,
}  # fmt: skip
# airbench94_muon.py's recipe (`make airbench-muon`); see the Makefile for the unit conversion.
AIRBENCH94_MUON = {
    "architecture": "fast", "conv_1_filters": 64, "conv_2_filters": 256,
    "conv_3_filters": 256, "batch_size": 2000, "epochs": 8, "optimizer": "muon",
    "learning_rate": 5260.0, "muon_learning_rate": 0.24, "muon_momentum": 0.6,
    "momentum": 0.85, "weight_decay": 0.0157, "bias_lr_scale": 0.0791,
    "lr_schedule": "triangle", "warmup_epochs": 0.0, "lr_start": 1.0, "lr_end": 0.0,
    "label_smoothing": 0.2, "dirac_init": True, "whiten_bias_epochs": 3, "lookahead": False,
    "tta_level": 2, "head": "airbench94_muon", "dropout": 0.0, "early_stopping_patience": None,
}  # fmt: skip
# The study's 0.8015 in the least training measured here: airbench94's recipe at a quarter of
# the widths (32/64/128) for 4 epochs, its warm-up at the same 23 % (0.8214 +- 0.0023 over
# 3 seeds in 131 s on 2 CPU cores, docs/benchmarks.md). The `study_speed` section.
STUDY_SPEED = {
    **AIRBENCH94, "conv_1_filters": 32, "conv_2_filters": 64, "conv_3_filters": 128,
    "epochs": 4, "warmup_epochs": 0.9,
}  # fmt: skip
# One ingredient off at a time (airbench's ablations); `ablations` leaves out a row that would
# not change the default and adds the swap to the other optimizer's recipe. The last row is
# the port this one replaced: Keras' own Nesterov SGD at airbench94's step size, its decoupled
# weight decay (lr x wd per step) and one rate for all weights.
ABLATIONS = {
    "bias lr x1": {"bias_lr_scale": 1.0},
    "no dirac init": {"dirac_init": False},
    "whitening bias frozen": {"whiten_bias_epochs": 0},
    "random flip": {"alternating_flip": False},
    "no lookahead": {"lookahead": False},
    "no TTA": {"tta_level": 0},
    "mirror TTA only": {"tta_level": 1},
    "Keras SGD, decoupled decay": {"optimizer": "nesterov", "weight_decay": 5e-4},
}
# Where the two airbench recipes' optimizers differ (the batch and width stay the default's).
OPTIMIZER_RECIPE = (
    "optimizer", "learning_rate", "momentum", "weight_decay", "bias_lr_scale",
    "muon_learning_rate", "muon_momentum", "lr_schedule", "warmup_epochs", "lr_start", "lr_end",
    "lookahead", "head",
)  # fmt: skip


def ablations(train) -> dict[str, dict]:
    """ABLATIONS as they apply to `train` (the default): rows that would change nothing are
    left out; with a Muon default, the bias-rate row too (Muon has no one weights' rate) and
    the SGD rows start from airbench94's SGD recipe; "Muon"/"SGD" rows swap the optimizer's
    recipe for the other one's (airbench94's warm-up at its 23 % of the default's epochs)."""
    from cifar10_mlops.training.optimizers import airbench_step_gain

    sgd = {key: AIRBENCH94.get(key, getattr(train, key)) for key in OPTIMIZER_RECIPE}
    sgd["warmup_epochs"] = round(0.23 * train.epochs, 2)
    muon = {key: AIRBENCH94_MUON[key] for key in OPTIMIZER_RECIPE}
    rows = {}
    if train.optimizer == "muon":
        rows["airbench94 SGD, not Muon"] = sgd
    elif train.optimizer == "airbench":
        rows["Muon, not airbench94 SGD"] = muon
    base = sgd if train.optimizer == "muon" else {}
    for name, values in ABLATIONS.items():
        if train.optimizer == "muon" and name == "bias lr x1":
            continue
        if values.get("optimizer") == "nesterov":  # the same Keras step size as airbench's
            rate = base.get("learning_rate", train.learning_rate)
            gain = airbench_step_gain(train.batch_size, base.get("momentum", train.momentum))
            values = {**base, **values, "learning_rate": rate * gain}
        current = {**train.model_dump(), **train.augment.model_dump()}
        if any(current[key] != value for key, value in values.items()):
            rows[name] = values
    return rows


def machine() -> dict:
    import tensorflow as tf

    return {
        **runs.hardware(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        **runs.software(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def load_data(prepared: Path, n_synthetic: int):
    """(train, val, test) splits of data/prepared, or random ones when it is absent."""
    from cifar10_mlops.core.splits import load_split

    if (prepared / "train.npz").exists():
        return tuple(load_split(prepared, name) for name in ("train", "val", "test")), "prepared"
    rng = np.random.default_rng(0)

    def fake(n):
        return rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n, np.uint8)

    return (fake(n_synthetic), fake(1000), fake(1000)), "random"


class StepTimer(keras.callbacks.Callback):
    """Times training steps after the first `warmup` (graph tracing, caches, pipeline fill)."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.steps, self.start = warmup, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()

    def rate(self, batch_size: int) -> float:
        """Images per second over the timed steps."""
        return (self.steps - self.warmup) * batch_size / (time.perf_counter() - self.start)


STUDY_NETWORK = dict(architecture="baseline", conv_1_filters=32, conv_2_filters=64,
                     conv_3_filters=None, dense_units=64, dropout=0.0)  # fmt: skip


def study_model():
    """The study's §3.3 network with Keras' own layers, compiled as the study did."""
    from cifar10_mlops.training.model import build_model

    model = build_model(**STUDY_NETWORK)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def throughput(data, params, *, images: int, rounds: int, warmup: int = 10) -> dict:
    """Images/s of the study's pipeline and the `train` stage's, both training the study's
    baseline network, alternated `rounds` times on `images` images each; medians."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the study's import

    from cifar10_mlops.training.network import compile_model
    from cifar10_mlops.training.data import make_dataset, steps_per_epoch

    x, y = data[0][0][:images], data[0][1][:images]
    # The study's notebook: its generator, batch 64, Keras' BatchNormalization, Adam.
    generator = ImageDataGenerator(
        rotation_range=15,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
    )
    study = study_model()
    # The train stage's: params.yaml's batch size, augmentation, optimizer and loss, through
    # network.compile_model (fused BatchNormalization), on the same architecture.
    cfg = params.train.model_copy(update=STUDY_NETWORK)
    ours = compile_model(cfg, x)
    dataset = make_dataset(x, y, cfg.batch_size, seed=0, augment=cfg.augment)
    rates = {"study": [], "project": []}

    def timed(batch: int) -> StepTimer:  # at most half of a round's steps are warm-up
        return StepTimer(min(warmup, max(1, len(x) // batch // 2)))

    for round_ in range(rounds):
        timer = timed(STUDY_BATCH)
        flow = generator.flow(x, y, batch_size=STUDY_BATCH, seed=round_)
        study.fit(flow, epochs=1, callbacks=[timer], verbose=0)
        rates["study"].append(timer.rate(STUDY_BATCH))
        timer = timed(cfg.batch_size)
        steps = steps_per_epoch(len(x), cfg.batch_size)
        ours.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
        rates["project"].append(timer.rate(cfg.batch_size))
        print(f"  round {round_ + 1}: study {rates['study'][-1]:,.0f} img/s, project "
              f"{rates['project'][-1]:,.0f} img/s", flush=True)  # fmt: skip
    study_rate, ours_rate = (statistics.median(rates[k]) for k in ("study", "project"))
    # What limits it: the network's arithmetic against the most this CPU multiplies per second.
    from cifar10_mlops.training.model import forward_mflops

    train_mflops = 3 * forward_mflops(ours)  # forward + backward (input and weight gradients)
    peak = matmul_gflops()
    return {
        "study_images_per_s": round(study_rate, 1),
        "study_batch": STUDY_BATCH,
        "project_images_per_s": round(ours_rate, 1),
        "project_batch": cfg.batch_size,
        "ratio": round(ours_rate / study_rate, 2),
        "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "network": "the study's baseline CNN",
        "train_mflops_per_image": round(train_mflops, 1),
        "project_gflops": round(ours_rate * train_mflops / 1e3, 1),
        "matmul_gflops": round(peak, 1),
        "ceiling_images_per_s": round(peak * 1e3 / train_mflops),
    }


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """float32 GFLOP/s of large matrix products: about the most arithmetic this CPU does."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    product().numpy()  # trace, warm the caches
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product().numpy()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def time_to_accuracy(data, params, *, strategy=None, probe: bool = True) -> dict:
    """The train stage's training (params.yaml as is), test accuracy after every epoch
    (`probe`; without it, only at the end), and the final model's at each TTA level."""
    from cifar10_mlops.training.model import with_tta
    from cifar10_mlops.stages.train import train

    train_split, val_split, (x_test, y_test) = data

    class TestProbe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.scoring, self.curve, self.start = 0.0, [], time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            began = time.perf_counter()
            elapsed = began - self.start - self.scoring  # training time, scoring excluded
            scored = with_tta(self.model, params.train.tta_level)  # as the saved model predicts
            probs = scored.predict(x_test, batch_size=1000, verbose=0)
            accuracy = float((probs.argmax(axis=1) == y_test).mean())
            self.scoring += time.perf_counter() - began
            self.curve.append({"epoch": epoch + 1, "seconds": round(elapsed, 1),
                               "test_accuracy": accuracy})  # fmt: skip
            print(f"  epoch {epoch + 1}: {elapsed:.0f}s, test accuracy {accuracy:.4f}", flush=True)

    probing, probe = probe, TestProbe()
    model, _ = train(
        params.train, train_split, val_split, seed=params.seed,
        callbacks=[probe] if probing else [], strategy=strategy,
    )  # fmt: skip
    train_seconds = time.perf_counter() - probe.start - probe.scoring
    # The lookahead leaves the model on its average after the last epoch's probe: score that,
    # on test and (for comparing with a tuned run) on validation.
    scored = with_tta(model, params.train.tta_level)

    def accuracy(x, y):
        return float((scored.predict(x, batch_size=1000, verbose=0).argmax(axis=1) == y).mean())

    final, final_val = accuracy(x_test, y_test), accuracy(*val_split)
    by_tta = {}  # the same trained weights scored with each test-time augmentation
    for level in (0, 1, 2):
        views = with_tta(model, level)
        probs = views.predict(x_test, batch_size=1000, verbose=0)
        by_tta[str(level)] = float((probs.argmax(axis=1) == y_test).mean())
    reached = {}
    for target in TARGETS:
        point = next((p for p in probe.curve if p["test_accuracy"] >= target), None)
        reached[str(target)] = None if point is None else {
            "seconds": point["seconds"], "epoch": point["epoch"]}  # fmt: skip
    return {
        "reached": reached,
        "train_seconds": round(train_seconds, 1),
        "final_test_accuracy": final,
        "final_val_accuracy": final_val,
        "final_test_accuracy_by_tta_level": by_tta,
        "curve": probe.curve,
    }


def with_train(params, **values):
    """`params` with `train` values replaced (augment.* keys go to train.augment)."""
    augment = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("augment.")}
    rest = {k: v for k, v in values.items() if not k.startswith("augment.")}
    if "alternating_flip" in rest:
        augment["alternating_flip"] = rest.pop("alternating_flip")
    augmented = params.train.augment.model_copy(update=augment)
    train = params.train.model_copy(update={**rest, "augment": augmented})
    return params.model_copy(update={"train": train})


def ablation(data, params, *, seeds: int) -> dict:
    """The default training, then each ABLATIONS entry, `seeds` seeds each: final test
    accuracy with the saved model's test-time augmentation; mean and sample spread. A row
    that changes only `tta_level` is inference only: the default's models, scored so."""
    from cifar10_mlops.core.stage import seed_everything

    rows, defaults = {}, []
    for name, values in {"default": {}, **ablations(params.train)}.items():
        if set(values) == {"tta_level"}:
            accuracies = [
                run["final_test_accuracy_by_tta_level"][str(values["tta_level"])]
                for run in defaults
            ]
            rows[name] = _row(values, accuracies)
            print(f"[ablation] {name}: {accuracies} (the default's models)", flush=True)
            continue
        accuracies = []
        for seed in range(params.seed, params.seed + seeds):
            seed_everything(seed, deterministic=params.deterministic)
            run = with_train(params.model_copy(update={"seed": seed}), **values)
            result = time_to_accuracy(data, run, probe=False)
            defaults += [result] if name == "default" else []
            accuracies.append(result["final_test_accuracy"])
            print(f"[ablation] {name} seed {seed}: {accuracies[-1]:.4f} "
                  f"({result['train_seconds']:.0f} s)", flush=True)  # fmt: skip
        rows[name] = _row(values, accuracies)
    return rows


def _row(changes: dict, accuracies: list[float]) -> dict:
    return {
        "changes": changes,
        "accuracies": accuracies,
        "mean": statistics.fmean(accuracies),
        "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
    }


def gpu(data, params) -> dict:
    """The airbench94 preset on the first GPU (mixed precision), as time_to_accuracy."""
    from cifar10_mlops.training import devices

    placement = devices.setup("auto")
    if not placement.describe().lower().count("gpu"):
        return {"skipped": f"no GPU ({placement.describe()})"}
    run = with_train(params, **AIRBENCH94)
    result = time_to_accuracy(data, run, strategy=placement.strategy)
    return {"device": placement.describe(), **result}


def tracking(data, params, *, images: int, repeats: int, epochs: int = 2) -> dict:
    """Wall time of the same short training with and without MLflow logging."""
    import mlflow

    from cifar10_mlops.core.settings import flatten
    from cifar10_mlops.stages.train import MlflowEpochLogger, train

    (x, y), val = data[0], data[1]
    cfg = params.train.model_copy(update={"epochs": epochs, "early_stopping_patience": None})
    split = (x[:images], y[:images])
    val = (val[0][:1000], val[1][:1000])
    store = tempfile.mkdtemp(prefix="bench-mlflow-")  # removed at the end
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    experiment = mlflow.create_experiment("bench", artifact_location=Path(store).as_uri())

    def plain():
        train(cfg, split, val, seed=params.seed)

    def tracked():
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_params(flatten(params))
            train(cfg, split, val, seed=params.seed, callbacks=[MlflowEpochLogger()])

    plain()  # warm-up: graph tracing, caches
    times = {"without": [], "with": []}
    for _ in range(repeats):
        for name, fn in (("without", plain), ("with", tracked)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    shutil.rmtree(store, ignore_errors=True)
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    return {
        "seconds_without": round(without, 2),
        "seconds_with": round(with_, 2),
        "overhead": round(with_ / without - 1, 4),
        "runs": repeats,
        "images": images,
        "epochs": epochs,
    }


def determinism(args, *, repeats: int, epochs: int = 2) -> dict:
    """Seconds per epoch with and without op determinism, fresh processes alternated."""
    runs: dict[str, list[dict]] = {"deterministic": [], "free": []}
    for _ in range(repeats):
        for mode in runs:
            cmd = [
                sys.executable, __file__, "--determinism-run", mode, "--epochs", str(epochs),
                "--images", str(args.images), "--data", str(args.data),
                "--params", str(args.params), *(["--set", *args.set] if args.set else []),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"determinism run failed: {out.stderr[-1000:]}")
            runs[mode].append(yaml.safe_load(out.stdout.strip().splitlines()[-1]))
            print(f"[determinism] {mode}: {runs[mode][-1]}", flush=True)
    # The fastest reading of each mode: this kind of VM alternates between two speeds about 2x
    # apart for minutes at a time, whatever runs, so a median of 3 can compare a fast state
    # with a slow one; the minimum compares the two modes at the machine's own best.
    seconds = {m: min(r["epoch_seconds"] for r in rs) for m, rs in runs.items()}
    return {
        "seconds_per_epoch": {m: round(v, 2) for m, v in seconds.items()},
        "readings": {m: [r["epoch_seconds"] for r in rs] for m, rs in runs.items()},
        "ratio": round(seconds["deterministic"] / seconds["free"], 4),
        "same_weights": {m: len({r["weights_sha256"] for r in rs}) == 1 for m, rs in runs.items()},
        "weights_sha256": {
            m: sorted({r["weights_sha256"][:16] for r in rs}) for m, rs in runs.items()
        },
        "runs": repeats, "images": args.images, "epochs": epochs,
    }  # fmt: skip


def determinism_run(args, params, mode: str, epochs: int) -> None:
    """One training of the determinism section, in this process; prints a JSON line."""
    import json

    from cifar10_mlops.core.stage import seed_everything
    from cifar10_mlops.stages.train import train
    from cifar10_mlops.training.weights import weights_sha256

    seed_everything(params.seed, deterministic=mode == "deterministic")
    (x, y), val, _ = load_data(args.data, args.images)[0]
    cfg = params.train.model_copy(update={"epochs": epochs, "early_stopping_patience": None})
    timer = StepTimer(warmup=10)
    model, _ = train(cfg, (x[: args.images], y[: args.images]), (val[0][:1000], val[1][:1000]),
                     seed=params.seed, callbacks=[timer])  # fmt: skip
    rate = timer.rate(cfg.batch_size)
    print(json.dumps({
        "epoch_seconds": round(45_000 / rate, 2), "images_per_s": round(rate, 1),
        "weights_sha256": weights_sha256(model),
    }))  # fmt: skip


def noop_repro(repeats: int = 3) -> dict:
    """`dvc repro` with nothing to do; skipped unless the pipeline is up to date."""
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run([*dvc, "status"], cwd=ROOT, capture_output=True, text=True)
    if "Data and pipelines are up to date" not in status.stdout:
        return {"skipped": "the pipeline is not up to date here: run `make repro` first"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*dvc, "repro"], cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return {"seconds": round(statistics.median(times), 2), "runs": repeats}


def table(results: dict) -> str:
    rows = []
    if "throughput" in results:
        t = results["throughput"]
        rows += [
            ("throughput, study (ImageDataGenerator, batch 64)",
             f"{t['study_images_per_s']:,.0f} img/s"),
            (f"throughput, project (tf.data, batch {t['project_batch']})",
             f"{t['project_images_per_s']:,.0f} img/s"),
            ("throughput ratio, project / study", f"{t['ratio']:.2f}x"),
            ("project's arithmetic rate / float32 matmul rate",
             f"{t['project_gflops']:.0f} / {t['matmul_gflops']:.0f} GFLOP/s"),
            ("compute ceiling for this network (matmul rate)",
             f"{t['ceiling_images_per_s']:,} img/s"),
        ]  # fmt: skip
    labels = {"time_to_accuracy": "train", "study_speed": "STUDY_SPEED (32/64/128 x 4)"}
    for section in ("time_to_accuracy", "study_speed", "gpu"):
        t = results.get(section)
        if t is None or "skipped" in t:
            continue
        label = labels[section] if section in labels else f"airbench94 on {t['device']}"
        for target, point in t["reached"].items():
            reached = "not reached" if point is None else (
                f"{point['seconds'] / 60:.1f} min (epoch {point['epoch']})")  # fmt: skip
            rows.append((f"{label}: time to test accuracy {target}", reached))
        whole = (f"{t['train_seconds'] / 60:.1f} min / {t['final_test_accuracy']:.4f} / "
                 f"{t['final_val_accuracy']:.4f}")  # fmt: skip
        rows.append((f"{label}: whole time / final test / validation accuracy", whole))
    if "ablation" in results:
        for name, row in results["ablation"].items():
            spread = "" if row["std"] is None else f" +- {row['std']:.4f}"
            rows.append((f"ablation: {name} ({len(row['accuracies'])} seeds)",
                         f"{row['mean']:.4f}{spread}"))  # fmt: skip
    if "tracking" in results:
        t = results["tracking"]
        rows.append(("MLflow tracking overhead", f"{t['overhead']:+.1%} ({t['seconds_with']}s vs "
                                                 f"{t['seconds_without']}s)"))  # fmt: skip
    if "determinism" in results:
        t = results["determinism"]
        per = t["seconds_per_epoch"]
        rows.append(
            (
                "seconds per epoch (fastest run), deterministic / free",
                f"{per['deterministic']} / {per['free']} s ({t['ratio']:.3f}x)",
            )
        )
        rows.append(
            (
                "  every reading, deterministic / free",
                f"{t['readings']['deterministic']} / {t['readings']['free']}",
            )
        )
        rows.append(
            (
                "same weights in every run, deterministic / free",
                f"{t['same_weights']['deterministic']} / {t['same_weights']['free']}",
            )
        )
    if "noop_repro" in results:
        t = results["noop_repro"]
        rows.append(("no-op `dvc repro`", t.get("skipped") or f"{t['seconds']} s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS + EXTRA_SECTIONS, default=list(SECTIONS)
    )
    parser.add_argument("--ablate", action="store_true", help="add the ablation table")
    parser.add_argument("--gpu", action="store_true", help="add the airbench94 GPU run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per ablation row")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="train values for time_to_accuracy and ablation, e.g. epochs=4 conv_1_filters=32",
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/...)")
    parser.add_argument(
        "--images", type=int, default=12_800, help="training images per throughput/tracking run"
    )
    parser.add_argument(
        "--repeats", type=int, default=5,
        help="alternated rounds of throughput and tracking (determinism: at most 3)",
    )  # fmt: skip
    parser.add_argument(
        "--determinism-run", choices=("deterministic", "free"), help=argparse.SUPPRESS
    )
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from cifar10_mlops.core.settings import load_params, replace_checked
    from cifar10_mlops.core.errors import ConfigError

    params = loaded = load_params(args.params)
    try:
        values = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        # Checked as params.yaml's train section is: a wrong type or range is one line, not a
        # traceback. Only `train` runs here, so the other sections need not fit it.
        train = replace_checked(with_train(params, **values).train, "train")
        params = params.model_copy(update={"train": train})
    except (ValueError, TypeError, ConfigError) as exc:
        parser.error(f"--set: {exc}")
    if args.determinism_run:
        determinism_run(args, params, args.determinism_run, args.epochs)
        return
    sections = args.only + ["ablation"] * args.ablate + ["gpu"] * args.gpu
    data, source = load_data(args.data, args.images)
    needs_data = {"time_to_accuracy", "study_speed", "ablation", "gpu"}.intersection(sections)
    if needs_data and source != "prepared":
        parser.error(f"{', '.join(sorted(needs_data))} needs {args.data}: run `dvc repro prepare`")

    results: dict = {}
    # What a run record says about this run (reports/runs/): only a run at params.yaml as it
    # stands measures today's recipe.
    described = runs.describe("bench", shlex.join(["benchmarks/bench.py", *sys.argv[1:]]),
                              args.params, []) if not args.set else None  # fmt: skip
    seconds: dict[str, float] = {}
    for name in dict.fromkeys(sections):
        print(f"[bench] {name} ...", flush=True)
        started = time.monotonic()
        if name == "throughput":
            results[name] = throughput(data, params, images=args.images, rounds=args.repeats)
        elif name == "time_to_accuracy":
            results[name] = time_to_accuracy(data, params)
        elif name == "study_speed":
            results[name] = time_to_accuracy(data, with_train(loaded, **STUDY_SPEED))
        elif name == "tracking":
            results[name] = tracking(data, params, images=args.images, repeats=args.repeats)
        elif name == "ablation":
            results[name] = ablation(data, params, seeds=args.seeds)
        elif name == "gpu":
            results[name] = gpu(data, params)
        elif name == "determinism":
            results[name] = determinism(args, repeats=min(args.repeats, 3))
        else:
            results[name] = noop_repro()
        seconds[name] = round(time.monotonic() - started, 1)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "data": source,
        "results": results,
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{report['date'][:10]}-{socket.gethostname()}.json")  # fmt: skip
    write_json(out, report)  # first: the measurements outlast any error in printing them
    print(table(results))
    print(f"-> {out}")
    if described and "time_to_accuracy" in results:
        accuracy = results["time_to_accuracy"]["final_test_accuracy"]
        runs.write_record(described | {
            "stages": seconds, "wall_seconds": round(sum(seconds.values()), 1),
            "test": {"accuracy": accuracy}}, ROOT / runs.RUNS_DIR)  # fmt: skip


if __name__ == "__main__":
    main()
