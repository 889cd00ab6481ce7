"""The `tune` stage: a real (tiny) Hyperband search logged to a real sqlite MLflow store."""

import csv
import json
import re
import shlex
from pathlib import Path

import mlflow
import pytest
import yaml

from cifar10_mlops.core.lineage import dvc_hash, split_digest
from cifar10_mlops.core.settings import Params, load_params
from cifar10_mlops.core.errors import ConfigError
from cifar10_mlops.core.splits import load_split
from cifar10_mlops.stages.tune import __main__ as tune
from cifar10_mlops.stages.tune.oracle import BudgetedHyperbandOracle
from cifar10_mlops.stages.tune.space import mflops
from helpers import (
    REPO,
    bench_module,
    error_line,
    forget_tracking_uri,
    once,
    place_store,
    relocate,
    runs,
    stage_args,
    tiny_params,
    tune_cli,
    write_prepared,
)

# tiny_params' search: max_epochs 2, factor 2, one iteration = brackets of 2+1 and 2 trials.
TRIALS, EPOCHS = 5, 7
SEARCHED = ("conv_1_filters", "conv_2_filters", "dense_units", "learning_rate", "optimizer")


def trials_csv(root):
    with open(root / "reports" / "tune" / "trials.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def searched_once(tmp_path_factory, migrated_store) -> Path:
    """A folder after one tiny search (the tune stage, in-process), made once per run for the
    tests that only read a search's results: the search is the expensive part."""

    def make(folder: Path) -> None:
        write_prepared(folder / "data" / "prepared")
        place_store(migrated_store, folder / "mlruns" / "mlflow.db")
        (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
        with pytest.MonkeyPatch.context() as env:
            env.chdir(folder)
            forget_tracking_uri(env)
            env.delenv("DVC_ROOT", raising=False)
            tune.main(["--params", "params.yaml", *stage_args("tune")])

    return once(tmp_path_factory, "searched", make)


@pytest.fixture
def searched(searched_once, in_empty_project) -> Path:
    """The working directory: a copy of searched_once of this test's own."""
    return relocate(searched_once, in_empty_project)


@pytest.mark.extended  # a search: 1.5 min
def test_search_writes_best_values_trials_and_nested_mlflow_runs(searched):
    in_project = searched

    best = json.loads((in_project / "models" / "best_hparams.json").read_text())
    assert set(best["best_trial_values"]) == set(SEARCHED)
    # adopted only past the noise check, which names its numbers either way
    assert best["hyperparameters"] == (best["best_trial_values"] if best["adopted"] else {})
    assert best["reason"].startswith("adopted" if best["adopted"] else "kept train's values")
    rows = trials_csv(in_project)
    assert len(rows) == TRIALS and all(r["status"] == "COMPLETED" for r in rows)
    top = max(rows, key=lambda r: float(r["score"]))
    assert best["trial"] == top["trial"] and best["score"] == pytest.approx(float(top["score"]))
    # The first trial is train's own configuration; the search has to beat it.
    cfg = load_params(in_project / "params.yaml").train
    first = rows[0]
    assert (int(first["conv_1_filters"]), first["optimizer"]) == (cfg.conv_1_filters, cfg.optimizer)
    summary = json.loads((in_project / "reports" / "tune" / "summary.json").read_text())
    assert summary["trials"] == TRIALS and summary["epochs_run"] == EPOCHS
    assert summary["adopted"] == best["adopted"]
    assert summary["best_val_accuracy"] == pytest.approx(best["score"], abs=1e-4)
    for image in ("trials.png", "trials_table.png"):
        assert (in_project / "reports" / "tune" / image).stat().st_size > 10_000
    assert not (in_project / "models" / "tuner").exists()  # state removed once complete

    [parent] = runs(stage="tune")
    assert parent.info.status == "FINISHED" and parent.info.run_id == best["mlflow_run_id"]
    assert parent.data.params["tune.max_epochs"] == "2"
    assert parent.data.params["tune.space.learning_rate.sampling"] == "log"
    assert parent.data.params["best.optimizer"] == best["best_trial_values"]["optimizer"]
    assert parent.data.tags["decision_reason"] == best["reason"]
    assert parent.data.metrics["search/best_val_accuracy"] == pytest.approx(best["score"], abs=1e-4)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"trials.json", "trials.csv", "searched.csv", "trials.png"} <= artifacts
    # what a person sees in the runs table: a short name, a description saying what was
    # searched, the data as MLflow datasets, the machine's load
    assert parent.info.run_name.startswith("tune-baseline-")
    assert "Hyperband over conv_1_filters" in parent.data.tags["mlflow.note.content"]
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10-train", "cifar10-val"}
    assert inputs["cifar10-val"].dataset.digest == split_digest(
        *load_split(in_project / "data" / "prepared", "val")
    )
    folder = dvc_hash(in_project / "data" / "prepared")
    assert {t.key: t.value for t in inputs["cifar10-val"].tags}["dvc_md5"] == folder
    assert {m for m in parent.data.metrics if m.startswith("system/")} >= {
        "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"
    }  # fmt: skip

    children = runs(**{"mlflow.parentRunId": parent.info.run_id})
    assert len(children) == TRIALS
    client = mlflow.MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED"
        # under training's keys, so the compare view lines trials and trainings up
        assert set(child.data.params) == {f"train.{k}" for k in SEARCHED}  # no tuner/* entries
        assert {"tuner/epochs", "tuner/initial_epoch", "tuner/bracket"} <= set(child.data.tags)
        assert "trial/score" in child.data.metrics
        epochs = int(child.data.tags["tuner/epochs"])
        start = int(child.data.tags["tuner/initial_epoch"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/accuracy")]
        assert steps == list(range(start + 1, epochs + 1))  # epochs counted from 1


@pytest.mark.extended  # the shared search first: 1 min
def test_train_uses_the_tuned_values_unless_told_not_to(searched, params_file):
    from cifar10_mlops.stages import train

    in_project = searched
    path = in_project / "models" / "best_hparams.json"
    record = json.loads(path.read_text())
    best = record["best_trial_values"]
    path.write_text(json.dumps({**record, "adopted": True, "hyperparameters": best}))
    params = params_file()
    train.main(["--params", str(params), *stage_args("train")])
    info = json.loads((in_project / "models" / "run.json").read_text())
    run = mlflow.get_run(info["run_id"])
    assert run.data.tags["hparams_source"] == "tune"
    for key, value in best.items():
        assert run.data.params[f"train.{key}"] == str(value)

    train.main(["--params", str(params_file(**{"train.use_tuned": False})), *stage_args("train")])
    run = mlflow.get_run(json.loads((in_project / "models" / "run.json").read_text())["run_id"])
    assert run.data.tags["hparams_source"] == "params"
    assert run.data.params["train.conv_1_filters"] == "8"


def test_disabled_tuning_skips_the_search_and_train_keeps_its_values(
    in_project, prepared, params_file
):
    from cifar10_mlops.stages import train

    tune_cli(params_file, **{"tune.enabled": False})
    best = json.loads((in_project / "models" / "best_hparams.json").read_text())
    assert best == {"enabled": False, "hyperparameters": {}}
    assert trials_csv(in_project) == []
    assert runs(stage="tune") == []
    train.main(["--params", str(params_file()), *stage_args("train")])
    [run] = runs(stage="train")
    assert run.data.tags["hparams_source"] == "params"


@pytest.mark.extended  # a search: 1.5 min
def test_budget_keeps_expensive_configurations_out_of_the_search(in_project, prepared, params_file):
    cfg = load_params(params_file()).train
    cheap = mflops(cfg, {"conv_1_filters": 8, "conv_2_filters": 8, "dense_units": 32})
    tune_cli(params_file, **{"tune.max_mflops": cheap + 0.01})
    rows = trials_csv(in_project)
    assert len(rows) >= 2
    assert all(float(r["mflops"]) <= cheap + 0.01 for r in rows)
    assert {(r["conv_1_filters"], r["conv_2_filters"]) for r in rows} == {("8", "8")}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tune.space.conv_1_filters": {"min": 64, "max": 32, "step": 16}}, "inverted range"),
        ({"tune.space.dense_units": {"min": 64, "max": 64, "step": 32}}, "empty range"),
        ({"tune.space.optimizer": {"values": ["adam", "rmsprop"]}}, "unknown optimizer 'rmsprop'"),
        ({"tune.space.optimizer": {"values": []}}, "tune.space.optimizer.values: empty"),
        ({"tune.space.conv_2_filters": {"min": 64, "max": 128, "step": 96}}, "step: must be in"),
        (
            {"tune.space.learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}},
            "min: must be > 0",
        ),
        ({"tune.max_epochs": 0}, "tune.max_epochs: must be >= 1"),
        ({"tune.factor": 1}, "tune.factor: must be >= 2"),
        ({"tune.objective": "accuracy"}, "tune.objective: must be one of"),
    ],
)
def test_bad_search_settings_stop_before_any_trial(
    in_empty_project, prepared, params_file, override, message
):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tune_cli(params_file, **override)
    assert not (in_empty_project / "models").exists()
    assert not (in_empty_project / "mlruns").exists()


def test_stage_reports_a_bad_setting_in_one_line(
    in_empty_project, prepared, params_file, run_module
):
    path = params_file(**{"tune.space.optimizer": {"values": ["adam", "rmsprop"]}})
    result = run_module("cifar10_mlops.stages.tune", "--params", str(path), *stage_args("tune"))
    assert result.returncode == 1
    # The last line is the error; the lines above it are TensorFlow's start-up notices.
    line = error_line(result)
    assert line.startswith("error: ") and "unknown optimizer 'rmsprop'" in line, result.stderr
    assert "Traceback" not in result.stderr
    assert not (in_empty_project / "models").exists()
    assert not (in_empty_project / "mlruns").exists()


def params_with_makefile_overrides(
    variable: str, tmp_path, *, repository: bool = False, **tiny
) -> Params:
    """Tiny params (with `tiny` overrides; `repository`: params.yaml as committed) and then
    the `-S` overrides a Makefile variable passes to `dvc exp run`, applied by DVC's own
    code, as `dvc exp run -S` applies them."""
    from dvc.utils.hydra import apply_overrides

    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) := (.*)$", text, re.M))
    line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], variables[variable])
    if repository and tiny:
        raise ValueError("repository=True takes params.yaml as committed: no tiny overrides")
    path = tmp_path / "params.yaml"
    base = (REPO / "params.yaml").read_text() if repository else yaml.safe_dump(tiny_params(**tiny))
    path.write_text(base)
    apply_overrides(path, [arg for arg in shlex.split(line) if arg != "-S"])
    return load_params(path)  # every override names a real key with a valid value


# Every Makefile variable a target hands to `dvc exp run` (make study, airbench, ...).
PRESETS = re.findall(r"dvc exp run .*\$\((\w+)\)$", (REPO / "Makefile").read_text(), re.M)


def test_the_makefile_presets_are_all_found():
    # The test below runs once per preset: an empty list would make it pass by running nothing.
    assert {"STUDY", "STUDY_TUNE", "AIRBENCH", "AIRBENCH_MUON", "TUNE_FULL"} <= set(PRESETS)


def test_make_tune_full_is_the_budget_the_recovery_benchmark_measured(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "search_recovery", REPO / "benchmarks" / "search_recovery.py"
    )
    recovery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recovery)
    tune_cfg = params_with_makefile_overrides("TUNE_FULL", tmp_path, repository=True).tune
    assert {k: getattr(tune_cfg, k) for k in recovery.FULL} == recovery.FULL
    oracle = BudgetedHyperbandOracle(
        objective="val_accuracy", max_epochs=tune_cfg.max_epochs, factor=tune_cfg.factor,
        hyperband_iterations=tune_cfg.hyperband_iterations, worker_timeout=900,
    )  # fmt: skip
    assert oracle.plan() == (7, 15)


@pytest.mark.parametrize("variable", PRESETS)
def test_every_preset_loads_over_the_committed_params(variable, tmp_path):
    # What `make study` (etc.) runs in a clone: the preset's overrides on params.yaml as
    # committed, checked as every stage checks them. A search entry the preset's optimizer
    # does not use is refused, so a preset that searches must null the default's others.
    params_with_makefile_overrides(variable, tmp_path, repository=True)


def test_make_tune_study_is_the_studys_search(tmp_path):
    params = params_with_makefile_overrides("STUDY_TUNE", tmp_path)
    tune_cfg = params.tune
    oracle = BudgetedHyperbandOracle(
        objective="val_accuracy",
        max_epochs=tune_cfg.max_epochs,
        factor=tune_cfg.factor,
        hyperband_iterations=tune_cfg.hyperband_iterations,
        worker_timeout=tune_cfg.worker_timeout,
    )
    assert oracle.plan() == (60, 240)
    assert tune_cfg.train_per_class is None and tune_cfg.max_mflops is None
    assert tune_cfg.early_stopping_patience == 3
    # The study's search space (§4.4).
    space = tune_cfg.space
    assert vars(space.conv_1_filters) == {"min": 32, "max": 64, "step": 16}
    assert vars(space.conv_2_filters) == {"min": 64, "max": 128, "step": 32}
    assert vars(space.dense_units) == {"min": 64, "max": 128, "step": 32}
    assert (space.learning_rate.min, space.learning_rate.max) == (1e-4, 1e-3)
    assert space.learning_rate.sampling == "log"
    assert space.optimizer.values == ["adam", "sgd"]
    assert space.conv_3_filters is None and space.weight_decay is None
    assert space.label_smoothing is None
    train = params.train
    assert (train.architecture, train.optimizer, train.batch_size) == ("baseline", "adam", 64)
    assert train.epochs == 15 and train.early_stopping_patience == 3


def test_make_study_trains_the_first_phase_without_tuning(tmp_path):
    params = params_with_makefile_overrides("STUDY", tmp_path)
    train = params.train
    assert params.tune.enabled is False
    assert (train.architecture, train.epochs, train.batch_size) == ("baseline", 30, 64)
    assert (train.optimizer, train.learning_rate, train.lr_schedule) == ("adam", 1e-3, "step")
    assert train.label_smoothing == 0 and train.weight_decay == 0 and train.tta_level == 0
    assert train.momentum == 0.9 and not train.lookahead and train.conv_3_filters is None
    # The study's ImageDataGenerator settings, and no pad-and-crop.
    assert vars(train.augment) == {
        "rotation": 15.0, "shift": 0.1, "shear": 0.2, "zoom": 0.2, "crop": 0,
        "horizontal_flip": True, "alternating_flip": False,
    }  # fmt: skip


def preset_train(variable: str, values: dict, tmp_path):
    """The `train` config a Makefile preset runs; it must hold exactly bench.py's `values`."""
    # The fast network has no dense layer to search (params.yaml searches none).
    tiny = {"tune.space.dense_units": None}
    train = params_with_makefile_overrides(variable, tmp_path, **tiny).train
    assert {key: getattr(train, key) for key in values} == values
    return train


def test_make_airbench_is_airbench94_as_the_benchmark_runs_it(tmp_path):
    train = preset_train("AIRBENCH", bench_module().AIRBENCH94, tmp_path)
    # legacy/airbench94.py's hyp: widths, batch, lr and wd per 1024, momentum, bias scaler.
    assert train.widths == (64, 256, 256) and train.batch_size == 1024
    assert (train.learning_rate, train.weight_decay, train.momentum) == (11.5, 0.0153, 0.85)
    assert train.bias_lr_scale == 64 and train.tta_level == 2 and train.augment.crop == 2


def test_make_airbench_muon_is_airbench94_muon_in_this_projects_units(tmp_path):
    train = preset_train("AIRBENCH_MUON", bench_module().AIRBENCH94_MUON, tmp_path)
    # airbench94_muon.py: head lr 0.67 and bias lr 0.053 per batch-summed loss, wd 2e-6 x batch.
    # This project's rates are per 1024 examples and momentum-free: x 1024 (2 - m)/(1 - m).
    per_unit = 1024 * (2 - train.momentum) / (1 - train.momentum)
    assert train.learning_rate == pytest.approx(0.67 * per_unit, rel=1e-3)
    assert train.learning_rate * train.bias_lr_scale == pytest.approx(0.053 * per_unit, rel=1e-3)
    assert train.weight_decay == pytest.approx(2e-6 * per_unit, rel=1e-2)
    assert (train.muon_learning_rate, train.muon_momentum, train.batch_size) == (0.24, 0.6, 2000)
