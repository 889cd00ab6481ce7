"""benchmarks/bench.py runs from a checkout and writes what the README's table shows."""

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, bench_module, bench_section, error_line

pytestmark = pytest.mark.integration


@pytest.mark.extended  # minutes of timed training: `make test-extended`, which CI runs
@pytest.mark.long(seconds=55)
def test_benchmark_measures_throughput_and_tracking_side_by_side(tmp_path, params_file):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "bench.py"),
            "--only", "throughput", "tracking",
            "--data", str(tmp_path / "absent"),  # random images of CIFAR-10's shape
            "--params", str(params_file()),  # the tracking section trains the tiny network
            "--images", "256", "--repeats", "1", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "throughput ratio, project / study" in result.stdout
    assert "MLflow tracking overhead" in result.stdout
    report = json.loads(out.read_text())
    assert report["data"] == "random"
    assert report["machine"]["tensorflow"] and report["machine"]["cores"] >= 1
    t = report["results"]["throughput"]
    assert t["study_images_per_s"] > 0 and t["project_images_per_s"] > 0
    # the ratio of the unrounded rates; the rates shown beside it are rounded to 0.1 image/s
    rounded = t["project_images_per_s"] / t["study_images_per_s"]
    slack = rounded * 0.05 * (1 / t["project_images_per_s"] + 1 / t["study_images_per_s"])
    assert t["ratio"] == pytest.approx(rounded, abs=slack + 0.005), t
    assert t["ceiling_images_per_s"] > 0 and t["matmul_gflops"] > 0
    tracking = report["results"]["tracking"]
    assert tracking["seconds_with"] > 0 and tracking["seconds_without"] > 0
    # The MLflow store it timed against is a throwaway one, removed afterwards.
    assert not any(p.name.startswith("bench-mlflow-") for p in tmp_path.iterdir())


def test_benchmark_refuses_a_bad_train_value_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--only", "time_to_accuracy",
         "--set", "epochs=0", "--out", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert error_line(result).endswith("error: --set: train.epochs: must be >= 1, got 0")
    assert not (tmp_path / "bench.json").exists()


def test_benchmark_set_is_checked_against_train_only(tmp_path):
    # Another optimizer is a valid train value even though params.yaml's search is Muon's:
    # only `train` runs here, so the run gets past --set (and stops for want of data).
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--only", "time_to_accuracy",
         "--set", "optimizer=airbench", "learning_rate=11.5", "--data", str(tmp_path / "absent"),
         "--out", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert error_line(result).endswith("time_to_accuracy needs " + str(tmp_path / "absent")
                                       + ": run `dvc repro prepare`")  # fmt: skip


def test_airbench_reference_refuses_a_file_that_is_not_airbench94(tmp_path):
    # The reference run adapts airbench's own legacy/airbench94.py; any other file (here the
    # project's own training code) is named and refused before PyTorch or data are needed.
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("train", "test"):
        (prepared / f"{split}.npz").write_bytes(b"")
    not_airbench = REPO / "src" / "cifar10_mlops" / "training" / "optimizers.py"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "airbench_reference.py"),
         "--airbench", str(not_airbench), "--data", str(prepared)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"error: {not_airbench}: not airbench's legacy/airbench94.py")
    assert "expected exactly one 'import torchvision'" in line


def test_ablation_rows_follow_the_defaults_optimizer():
    from cifar10_mlops.core.settings import load_params
    from cifar10_mlops.training.optimizers import airbench_step_gain

    ablation, common = bench_section("ablation"), bench_section("common")
    train = load_params(REPO / "params.yaml").train

    def recipe(values):
        return train.model_copy(
            update={k: v for k, v in values.items() if k in ablation.OPTIMIZER_RECIPE}
        )

    sgd, muon = recipe(common.AIRBENCH94), recipe(common.AIRBENCH94_MUON)
    # An SGD default: every ingredient's row, and the swap to Muon's recipe.
    rows = ablation.ablations(sgd)
    assert set(ablation.ABLATIONS) <= set(rows)
    assert rows["Muon, not airbench94 SGD"]["optimizer"] == "muon"
    # A Muon default: no row that changes nothing (it has no lookahead) or that Muon lacks
    # (one weights' rate for the biases to match); the SGD rows start from airbench94's SGD.
    rows = ablation.ablations(muon)
    assert "no lookahead" not in rows and "bias lr x1" not in rows
    swap = rows["airbench94 SGD, not Muon"]
    assert (swap["optimizer"], swap["learning_rate"]) == ("airbench", 11.5)
    assert swap["head"] == "airbench94" and swap["lookahead"] is True
    assert swap["warmup_epochs"] == pytest.approx(0.23 * muon.epochs, abs=0.01)
    keras_sgd = rows["Keras SGD, decoupled decay"]
    gain = airbench_step_gain(muon.batch_size, 0.85)
    assert keras_sgd["optimizer"] == "nesterov"
    assert keras_sgd["learning_rate"] == pytest.approx(11.5 * gain)
    assert keras_sgd["head"] == "airbench94" and keras_sgd["lookahead"] is True


def test_study_speed_is_airbench94_at_a_quarter_width_for_four_epochs():
    # The recipe `make bench` times to the study's accuracy: a valid train config (checked as
    # params.yaml is), airbench94's in all but widths, epochs and its warm-up's share of them.
    from cifar10_mlops.core.settings import load_params, replace_checked

    common, study_speed = bench_section("common"), bench_section("study_speed")
    params = load_params(REPO / "params.yaml")
    train = replace_checked(common.with_train(params, **study_speed.STUDY_SPEED).train, "train")
    changed = {k for k, v in study_speed.STUDY_SPEED.items() if common.AIRBENCH94[k] != v}
    assert changed == {"conv_1_filters", "conv_2_filters", "conv_3_filters", "epochs",
                       "warmup_epochs"}  # fmt: skip
    assert train.widths == (32, 64, 128) and train.epochs == 4
    assert train.warmup_epochs / train.epochs == pytest.approx(
        common.AIRBENCH94["warmup_epochs"] / common.AIRBENCH94["epochs"], abs=0.01
    )


def test_table_names_each_timed_training():
    def timed(final):
        reached = {"0.8015": {"seconds": 120.0, "epoch": 3}, "0.9": None}
        return {"reached": reached, "train_seconds": 131.0, "final_test_accuracy": final,
                "final_val_accuracy": 0.82}  # fmt: skip

    table = bench_module().table(
        {
            "time_to_accuracy": timed(0.8992),
            "study_speed": timed(0.8214),
            "gpu": {"device": "NVIDIA H100", **timed(0.94)},
        }  # fmt: skip
    )
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in table.splitlines())
    assert rows["train: time to test accuracy 0.8015"] == "2.0 min (epoch 3)"
    study = "STUDY_SPEED (32/64/128 x 4): whole time / final test / validation accuracy"
    assert rows[study] == "2.2 min / 0.8214 / 0.8200"
    assert rows["airbench94 on NVIDIA H100: time to test accuracy 0.9"] == "not reached"


@pytest.mark.extended
def test_determinism_section_times_both_modes_and_compares_their_weights(tmp_path, params_file):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "bench.py"), "--only", "determinism",
            "--data", str(tmp_path / "absent"), "--params", str(params_file()),
            "--images", "256", "--repeats", "2", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    t = json.loads(out.read_text())["results"]["determinism"]
    readings = t["readings"]
    assert len(readings["deterministic"]) == len(readings["free"]) == 2
    fastest = {mode: min(values) for mode, values in readings.items()}
    assert t["ratio"] == round(fastest["deterministic"] / fastest["free"], 4)
    # two fresh processes in deterministic mode end on the same weights
    assert t["same_weights"]["deterministic"] is True
    assert len(t["weights_sha256"]["deterministic"]) == 1
    assert "seconds per epoch (fastest run), deterministic / free" in result.stdout
