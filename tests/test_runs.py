"""Run records (cifar10_mlops.ops.runs): what `make repro`, `make airbench` and `make study`
leave in reports/runs/, read as a user reads it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.runs import effective_params, load_records, params_digest, write_record
from helpers import REPO, git, ran
from helpers import run_dvc as dvc


def record(cwd: Path, config: str, *command: str) -> subprocess.CompletedProcess:
    """`python -m cifar10_mlops.ops.runs <config> -- <command>`, as the Makefile runs it."""
    bin_dir = str(Path(sys.executable).parent)
    return subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.ops.runs", config, "--", *command],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip


def only_record(folder: Path, before: set[Path] = frozenset()) -> dict:
    """The one record in `folder`'s reports/runs/ that is not in `before`."""
    [path] = set((folder / "reports" / "runs").glob("*.json")) - before
    return json.loads(path.read_text())


@pytest.mark.extended  # a dvc exp run: 2.5 min
@pytest.mark.integration
def test_a_recorded_experiment_names_its_commit_params_stage_times_and_test_metrics(reproduced):
    pipeline = reproduced  # committed after its `dvc repro`: the experiment's baseline
    committed = set((pipeline / "reports" / "runs").glob("*.json"))  # the repository's
    exp = ["dvc", "exp", "run", "--temp", "-n", "two-epochs", "-S", "train.epochs=2"]
    result = record(pipeline, "two-epochs", *exp)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran(result) == ["train", "evaluate", "register"]  # DVC's output passed through
    assert yaml.safe_load((pipeline / "params.yaml").read_text())["train"]["epochs"] == 1

    entry = only_record(pipeline, committed)
    assert entry["commit"] == git(pipeline, "rev-parse", "HEAD").strip()
    assert entry["experiment"] == "two-epochs" and entry["command"] == " ".join(exp)
    # the stages the experiment ran have their times; the ones it reused, none
    assert [s for s, t in entry["stages"].items() if t is not None] == ran(result)
    assert all(entry["stages"][s] is None for s in ("download", "prepare", "tune"))
    assert entry["wall_seconds"] >= sum(t for t in entry["stages"].values() if t)
    # its params are the workspace's with the override: another configuration, seed aside
    two = effective_params(pipeline / "params.yaml", ["train.epochs=2"])
    assert entry["params_digest"] == params_digest(two)
    assert entry["params_digest"] != params_digest(yaml.safe_load(
        (pipeline / "params.yaml").read_text()))  # fmt: skip
    assert params_digest({**two, "seed": 7}) == entry["params_digest"]
    assert entry["hardware"]["cores"] >= 1 and entry["software"]["keras"]

    # its test metrics are the experiment's, as `dvc exp show` and MLflow have them
    shown = json.loads(dvc(pipeline, "exp", "show", "--json").stdout)
    [experiment] = [e for rev in shown for e in (rev.get("experiments") or [])]
    [exp_rev] = experiment["revs"]
    metrics = exp_rev["data"]["metrics"]["reports/metrics.json"]["data"]
    assert entry["test"] == {k: metrics[k] for k in ("accuracy", "f1_weighted", "f1_macro", "loss")}
    # The temporary copy is gone, but its MLflow run is in the repository's own store.
    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cifar10-cnn"], output_format="list")
    [exp_run] = [r for r in runs if r.data.params.get("train.epochs") == "2"]
    assert exp_run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])


def test_stage_times_come_from_the_commands_output_as_it_is_passed_through(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    script = (
        "import json, os, time\n"
        "print(\"Stage 'download' didn't change, skipping\")\n"
        "print(\"Running stage 'train':\", flush=True); time.sleep(1.0); print('epoch 1')\n"
        "print(\"Running stage 'evaluate':\", flush=True); time.sleep(0.2)\n"
        "os.makedirs('reports'); json.dump({'accuracy': 0.5, 'f1_weighted': 0.4}, "
        "open('reports/metrics.json', 'w'))\n"
    )
    result = record(tmp_path, "demo", sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    assert "epoch 1" in result.stdout and "[runs] recorded reports/runs/" in result.stdout
    entry = only_record(tmp_path)
    assert entry["stages"]["download"] is None
    assert 1.0 <= entry["stages"]["train"] < 5 and 0.2 <= entry["stages"]["evaluate"] < 5
    assert entry["test"] == {"accuracy": 0.5, "f1_weighted": 0.4}
    assert entry["commit"] == "unknown"  # not a git repository
    assert entry["config"] == "demo" and entry["seed"] == 42


@pytest.mark.parametrize(
    ("script", "code", "why"),
    [
        ("print(\"Running stage 'train':\"); raise SystemExit(3)", 3, "exit code 3"),
        ("print('Data and pipelines are up to date.')", 0, "no stage ran"),
        ("print(\"Running stage 'evaluate':\")", 0, "the run left no reports/metrics.json"),
    ],
)
def test_a_failed_empty_or_metricless_run_keeps_its_exit_code_and_writes_no_record(
    tmp_path, script, code, why
):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = record(tmp_path, "repro", sys.executable, "-c", script)
    assert result.returncode == code
    assert f"[runs] no record: {why}" in result.stderr
    assert not (tmp_path / "reports" / "runs").exists()


def test_bad_arguments_are_one_line_errors_and_nothing_runs(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    bad_set = record(tmp_path, "x", "dvc", "exp", "run", "-n", "x", "-S", "train.epochs=[1")
    assert bad_set.returncode == 1 and bad_set.stderr.startswith("error: -S train.epochs=[1:")
    assert len(bad_set.stderr.strip().splitlines()) == 1
    no_name = record(tmp_path, "x", "dvc", "exp", "run", "-S", "train.epochs=2")
    assert no_name.stderr.strip() == (
        "error: a recorded `dvc exp run` needs -n NAME to find its results"
    )
    bad_config = record(tmp_path, "../evil", *touch)
    assert bad_config.returncode == 2 and "config '../evil'" in bad_config.stderr
    nothing = record(tmp_path, "x")
    assert nothing.returncode == 2 and "no command" in nothing.stderr
    assert not marker.exists() and not (tmp_path / "reports").exists()


def test_records_are_numbered_not_overwritten_and_a_broken_one_is_named(tmp_path):
    entry = {"config": "repro", "date": "2026-12-06T10:00:00Z", "seed": 42,
             "params_digest": "abc", "test": {"accuracy": 0.9}}  # fmt: skip
    first, second = write_record(entry, tmp_path), write_record(entry, tmp_path)
    assert (first.name, second.name) == ("2026-12-06T1000-repro-s42.json",
                                         "2026-12-06T1000-repro-s42-2.json")  # fmt: skip
    assert [r["file"] for r in load_records(tmp_path)] == [first.name, second.name]
    (tmp_path / "2026-12-07-x.json").write_text('{"config": "repro"}')
    with pytest.raises(PipelineError, match=r"2026-12-07-x.json: not a run record \(missing"):
        load_records(tmp_path)
    (tmp_path / "2026-12-07-x.json").write_text(
        '{"config": "repro", "date": "d", "params_digest": "a", "test": {"accuracy": "0.9"}}'
    )
    with pytest.raises(PipelineError, match=r"2026-12-07-x.json: .*wrong type: \['accuracy'\]"):
        load_records(tmp_path)
