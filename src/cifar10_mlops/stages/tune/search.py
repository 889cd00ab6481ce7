"""The `tune` stage's search: its resumable state, its MLflow run, the tuner and the results.

The search's id fingerprints everything its result depends on (tune.*, the train keys of
space.TRAIN_KEYS and TUNABLE, the seed, the data's digest): a rerun with the same id resumes
the interrupted search from --state; any other settings start afresh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cifar10_mlops.core import lineage, metric_names, tracking
from cifar10_mlops.core.settings import TUNABLE, IntRange, Params, flatten
from cifar10_mlops.core.errors import ConfigError
from cifar10_mlops.core.repo import head_commit
from cifar10_mlops.core.files import text_digest, write_json
from cifar10_mlops.core.splits import load_manifest
from cifar10_mlops.stages.tune import noise
from cifar10_mlops.stages.tune.distributed import announce, end_lost_trials
from cifar10_mlops.stages.tune.oracle import kt_chief, make_tuner
from cifar10_mlops.stages.tune.runs import SearchLog
from cifar10_mlops.stages.tune.report import (
    TRIALS_FIELDS,
    plot_table,
    plot_trials,
    read_curves,
    searched_rows,
    trial_rows,
    trial_workers,
    write_searched_csv,
    write_trials_csv,
)
from cifar10_mlops.stages.tune.trials import prepare_search, run_trials
from cifar10_mlops.stages.tune.space import TRAIN_KEYS, fmt, in_space, mflops, searched

REPORTS = ("trials.csv", "searched.csv", "trials.png", "trials_table.png")  # and summary.json


def search_id(params: Params, data_sha256: str) -> str:
    """Fingerprint of everything a search's result depends on."""
    train = {k: v for k, v in params.train.model_dump().items() if k in TRAIN_KEYS + TUNABLE}
    payload = {"tune": params.tune.model_dump(), "train": train, "seed": params.seed}
    blob = json.dumps({**payload, "data": data_sha256}, sort_keys=True, default=str)
    return text_digest(blob)[:12]


def check_space(params: Params) -> dict | None:
    """Errors a search would only meet later, raised before any trial; returns the first
    trial's values (None when the first trial is random)."""
    tune, train = params.tune, params.train
    space = searched(tune.space)
    budget = tune.max_mflops
    if budget is not None:
        # Cost grows with every searched size, so the smallest one is the cheapest.
        cheapest = {k: s.min for k, s in space.items() if isinstance(s, IntRange)}
        cost = mflops(train, cheapest)
        if cost > budget:
            raise ConfigError(
                f"tune.max_mflops: {budget:g} admits no configuration of tune.space "
                f"(the cheapest needs {cost:.1f} MFLOPs per image)"
            )
    if not tune.first_trial_from_train:
        return None
    first = {name: getattr(train, name) for name in space}
    outside = [k for k, spec in space.items() if not in_space(first[k], spec)]
    if outside:
        print(f"[tune] first trial is random: train.{', train.'.join(outside)} outside tune.space")
        return None
    if budget is not None and mflops(train, first) > budget:
        print("[tune] first trial is random: train's network exceeds tune.max_mflops")
        return None
    return first


def write_disabled(best_path: Path, reports: Path) -> None:
    """tune.enabled is false: outputs that say so, and train keeps its own values."""
    write_json(best_path, {"enabled": False, "hyperparameters": {}})
    write_trials_csv([], reports / "trials.csv")
    write_searched_csv([], reports / "searched.csv")
    write_json(reports / "summary.json", {"trials": 0})
    plot_trials([], [], "val_accuracy", reports / "trials.png")
    plot_table([], reports / "trials_table.png")
    print(
        f"tuning disabled (tune.enabled: false); train keeps its params.yaml values -> {best_path}"
    )


def prepare_state(root: Path, project: str) -> bool:
    """Keep only this search's state under `root`; True when there is a search to resume."""
    if root.exists():
        for child in root.iterdir():
            if child.name != project:
                print(f"[tune] discarding {child}: an unfinished search with other settings")
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    return (root / project / "oracle.json").exists()


def log_settings(params: Params, *, seed: int, train_images: int, search: str, resumed: bool):
    """The active MLflow run's params (search space, Hyperband settings, network) and tags."""
    import mlflow

    network = {
        f"train.{k}": v for k, v in flatten(params.train).items() if k.split(".")[0] in TRAIN_KEYS
    }
    mlflow.log_params(
        {
            **flatten(params.tune, "tune."),
            **network,
            "seed": seed,
            "data_train_images": train_images,
        }
    )
    mlflow.set_tags(
        {
            **tracking.process_tags(),
            "stage": "tune",
            "search_id": search,
            "resumed": str(resumed).lower(),
            "git_commit": head_commit(),
            **tracking.orchestration_tags(),
        }
    )


def run_search(
    params: Params, *, data: Path, state_root: Path, best_path: Path, reports: Path
) -> dict:
    """Search `params.tune.space` on `data` under one MLflow run, resuming from `state_root`;
    write best_hparams.json to `best_path` and the reports into `reports`; returns the best."""
    import mlflow

    search = prepare_search(params, data)
    first = check_space(params)
    manifest = load_manifest(data)
    sid = search_id(params, manifest["source_sha256"])
    resuming = prepare_state(state_root, sid)
    experiment_id = tracking.configure(params.mlflow.experiment, tracking.tracking_uri())
    tracking.end_orphaned_runs(experiment_id)

    name, description = run_label(params, len(search.images), manifest["source"])
    with tracking.start_run(
        experiment_id=experiment_id, run_name=name, description=description,
        log_system_metrics=True,
    ) as run:  # fmt: skip
        log_settings(params, seed=search.seed, train_images=len(search.images), search=sid,
                     resumed=resuming)  # fmt: skip
        mlflow.set_tags({"data_sha256": manifest["source_sha256"], "distributed": str(kt_chief())})
        subset = params.tune.train_per_class
        lineage.log_splits({"train": (search.images, search.labels)}, manifest, data,
                           suffix="" if subset is None else f"-{subset}-per-class")  # fmt: skip
        lineage.log_splits({"val": search.val}, manifest, data)
        log = SearchLog(
            state=state_root / sid, experiment_id=experiment_id, parent_id=run.info.run_id,
            cfg=params,
        )  # fmt: skip
        tuner = make_tuner(
            params.tune, params.train, seed=search.seed, first=first, log=log,
            directory=state_root, project=sid, images=search.images, strategy=search.strategy,
        )  # fmt: skip
        log.state.mkdir(parents=True, exist_ok=True)
        announce_search(params, tuner, log, search, run.info.run_id, resuming)
        if kt_chief():
            announce(params, data, state_root, sid, run.info.run_id, experiment_id, manifest)
        run_trials(tuner, log, search.kwargs)
        end_lost_trials(run.info.run_id)
        best = finish(params, tuner, log, sid, run.info.run_id, best_path, reports, search)
    shutil.rmtree(state_root / sid, ignore_errors=True)
    if state_root.exists() and not any(state_root.iterdir()):
        state_root.rmdir()
    return best


def run_label(params: Params, images: int, source: str) -> tuple[str, str]:
    """The search's MLflow run name and description."""
    commit = head_commit()
    searched_keys = "+".join(searched(params.tune.space)) or "nothing"
    name = lineage.run_name("tune", params.train.architecture)
    description = (
        f"Hyperband over {searched_keys.replace('+', ', ')} of {params.train.architecture} "
        f"(max_epochs {params.tune.max_epochs}, factor {params.tune.factor}) on "
        f"{images} training images, objective {params.tune.objective} on the "
        f"validation split; data {source}; commit {lineage.short_commit(commit)}"
    )
    return name, description


def announce_search(params: Params, tuner, log: SearchLog, search, run_id: str, resuming: bool):
    """The search's first progress line: its size, data, objective, MLflow run."""
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    print(
        f"[tune] Hyperband: {log.total} trials, {log.epochs} epochs in all, on "
        f"{len(search.images)} training images; objective {params.tune.objective} on "
        f"{len(search.val[1])} validation images; MLflow run {run_id}"
        + (f"; resuming after {done} finished trials" if resuming else ""),
        flush=True,
    )


def write_reports(
    rows: list[dict], curves, summary: dict, objective: str, reports: Path, space: dict
):
    """trials.csv, searched.csv, summary.json and the two plots into `reports`, logged to the
    active run; `space`: the searched parameters (space.searched)."""
    import mlflow

    write_trials_csv(rows, reports / "trials.csv")
    write_searched_csv(searched_rows(rows, space), reports / "searched.csv")
    write_json(reports / "summary.json", summary)
    plot_trials(rows, curves, objective, reports / "trials.png", list(space))
    plot_table(rows, reports / "trials_table.png")
    mlflow.log_metrics(metric_names.search(summary))
    mlflow.log_table({c: [r[c] for r in rows] for c in TRIALS_FIELDS}, "trials.json")
    for name in REPORTS:
        mlflow.log_artifact(str(reports / name))


def finish(
    params: Params,
    tuner,
    log: SearchLog,
    sid: str,
    run_id: str,
    best_path: Path,
    reports: Path,
    search,
    extra: dict | None = None,
) -> dict:
    """Check the best values against train's own beyond the search's noise (noise.py), write
    the search's results and log them to its MLflow run; returns best_hparams.json. `extra`:
    more numbers for summary.json (a work-pool search's workers and rerun attempts)."""
    import mlflow

    tune, oracle = params.tune, tuner.oracle
    rows = trial_rows(oracle, params.train, log.state)
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise RuntimeError("no trial completed; see the errors of the trial runs in MLflow")
    best = oracle.get_best_trials(1)[0]
    values = {k: best.hyperparameters.values[k] for k in searched(tune.space)}
    decision = noise.check(params, search, values)
    curves = read_curves(log.state)
    summary = {
        f"best_{tune.objective}": round(float(best.score), 4),
        "trials": len(completed),
        "epochs_run": len(curves),
        "search_time_s": round(sum(r["seconds"] for r in rows if r["seconds"] == r["seconds"]), 1),
        "adopted": decision["adopted"],
    }
    if decision["comparison"] is not None:
        summary["noise_check_low"] = round(decision["comparison"].low, 4)
    if kt_chief():
        summary["workers"] = len(set(trial_workers(log.state).values()))
    summary.update(extra or {})
    result = {
        "enabled": True, "hyperparameters": values if decision["adopted"] else {},
        "best_trial_values": values, **noise.as_record(decision), "objective": tune.objective,
        "score": float(best.score), "trial": best.trial_id,
        "epochs": best.hyperparameters.values.get("tuner/epochs"), "trials": len(completed),
        "search_id": sid, "mlflow_run_id": run_id,
    }  # fmt: skip
    write_reports(rows, curves, summary, tune.objective, reports, searched(tune.space))
    mlflow.log_params({f"best.{k}": v for k, v in values.items()})
    noise.log(decision)
    write_json(best_path, result)
    mlflow.log_artifact(str(best_path))
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
    print(
        f"best of {len(completed)} trials: {tune.objective} {best.score:.4f} (trial "
        f"{best.trial_id}): {shown}; {decision['reason']} -> {best_path}"
    )
    return result
