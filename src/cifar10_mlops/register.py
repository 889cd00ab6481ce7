"""Stage `register`: add the evaluated model to the MLflow model registry and decide whether it
replaces the champion.

Reads  models/run.json (the training run, which `evaluate` logged the model into),
       reports/metrics.json (test metrics), models/model.keras (for its checksum), dvc.lock
       (upstream stages' checksum), params.yaml `register`; dvc.yaml, for the list of the
       `cache: false` outputs it copies into the run.
Writes reports/registry.json: the version, its aliases and the promotion decision with reason;
       params.yaml, dvc.lock and dvc.yaml's `cache: false` outputs (metrics, plot data, this
       registry.json) into the version's run (`pipeline/`), from which
       `cifar10-mlops checkout <model URI>` restores the pipeline state that made the version.

The model becomes a new version of `register.model_name` with the alias `challenger` (the
latest candidate). It also takes `champion` when there is none yet, or when it beats the
champion's test `register.metric` by at least `register.min_delta`. Aliases move; so that the
history survives them, each version keeps its decision in tags (`promotion`, `promotion_reason`,
and `replaced_by` on a champion that lost its alias).
"""

from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath

from cifar10_mlops import tracking
from cifar10_mlops.config import RegisterConfig, load_params
from cifar10_mlops.errors import PipelineError
from cifar10_mlops.files import file_digest, require_files, text_digest, write_json
from cifar10_mlops.stage import run_stage, stage_parser

CHAMPION, CHALLENGER = tracking.CHAMPION, tracking.CHALLENGER  # short names in this module
# Where each version's params.yaml, dvc.lock and registry.json go in its run, and the version
# tag that points there (read by checkout.py).
PIPELINE_ARTIFACTS, PIPELINE_TAG = "pipeline", "pipeline_state"
DVC_YAML = Path("dvc.yaml")
# Test metrics copied into version tags; `register.metric` is one of them.
METRICS = ("accuracy", "f1_weighted", "f1_macro", "loss")


def lock_digest(path: Path, stage: str = "register") -> str:
    """sha256 of dvc.lock's entries for every stage but `stage`, as canonical JSON.

    It identifies the upstream stages' inputs and outputs, and unlike the file's own hash it
    does not change when DVC records this stage in the same file."""
    import yaml

    if not path.is_file():
        return "none"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    stages.pop(stage, None)
    return text_digest(json.dumps(stages, sort_keys=True))


def decide(cfg: RegisterConfig, score: float, champion) -> tuple[bool, str]:
    """Whether a version scoring `score` replaces `champion` (a ModelVersion or None), and why."""
    name = f"test {cfg.metric}"
    if champion is None:
        return True, f"first champion: no version had the {CHAMPION} alias"
    tag = champion.tags.get(f"test_{cfg.metric}")
    if tag is None:
        return False, f"kept: champion v{champion.version} has no test_{cfg.metric} tag to compare"
    best = float(tag)
    lower = cfg.metric == "loss"
    gain = best - score if lower else score - best
    verdict = f"{name} {score:.4f} vs champion v{champion.version} {best:.4f}"
    if gain >= cfg.min_delta and gain > 0:
        return True, f"promoted: {verdict} ({'lower' if lower else 'higher'} by {gain:.4f})"
    return False, f"kept champion: {verdict}, needs {cfg.min_delta:.4f} better"


def register(
    cfg: RegisterConfig, run_id: str, metrics: dict, lineage: dict[str, str], tracking_uri: str
) -> dict:
    """Register the model of `run_id` (or reuse its version when it already is one) in the
    store at `tracking_uri`, move the aliases, tag the decision; returns the content of
    registry.json."""
    import mlflow

    client = mlflow.MlflowClient()
    name = cfg.model_name
    champion = _by_alias(client, name, CHAMPION)
    version = _version_of(client, name, run_id, metrics, lineage)
    score = metrics[cfg.metric]
    if champion is not None and champion.version == version.version:
        promoted, reason = True, f"already {CHAMPION}"
    else:
        promoted, reason = decide(cfg, score, champion)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if promoted and (champion is None or champion.version != version.version):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "replaced_by", version.version)
    client.set_model_version_tag(
        name, version.version, "promotion", CHAMPION if promoted else CHALLENGER
    )
    client.set_model_version_tag(name, version.version, "promotion_reason", reason)
    return {
        "model_name": name,
        "version": int(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "run_id": run_id,
        "aliases": [CHAMPION, CHALLENGER] if promoted else [CHALLENGER],
        "promoted": promoted,
        "reason": reason,
        "metric": f"test_{cfg.metric}",
        "score": score,
        "champion_before": None if champion is None else int(champion.version),
        "champion": int(version.version if promoted else champion.version),
        # as configured (the embedded store's relative URI), not as resolved on this machine:
        # the file is committed
        "tracking_uri": tracking_uri,
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version_of(client, name: str, run_id: str, metrics: dict, lineage: dict[str, str]):
    """The version of `name` holding the model of `run_id`: a new one, tagged with the test
    metrics and lineage, unless a rerun of this stage already registered it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        print(f"the model of run {run_id} already is {name} v{existing[0].version}")
        return existing[0]
    run = client.get_run(run_id)
    tags = {f"test_{k}": f"{metrics[k]:.6f}" for k in METRICS}
    if "best_val_accuracy" in run.data.metrics:
        tags["val_accuracy"] = f"{run.data.metrics['best_val_accuracy']:.6f}"
    tags.update(lineage)
    tags.update(
        {k: run.data.tags[k] for k in ("data_sha256", "hparams_source") if k in run.data.tags}
    )
    try:
        source = run.data.tags.get("model_uri", f"runs:/{run_id}/model")  # set by evaluate
        return mlflow.register_model(source, name, tags=tags)
    except MlflowException as exc:
        raise PipelineError(f"cannot register the model of run {run_id}: {exc.message}") from None


def uncached_outputs(dvc_yaml: Path) -> list[Path]:
    """dvc.yaml's `cache: false` outputs (metrics, plot data, registry.json), in its order:
    git holds them, not the DVC cache or remote, so each version keeps its own copy."""
    import yaml

    if not dvc_yaml.is_file():
        return []
    found = []
    for stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    found += [
                        Path(p) for p, props in entry.items() if (props or {}).get("cache") is False
                    ]
    return found


def keep_pipeline_state(result: dict, params: Path, lock: Path, outputs: list[Path]) -> None:
    """Log params.yaml, dvc.lock (every stage before this one, as DVC recorded them) and the
    uncached outputs (under `outputs/<their path>`) into the version's run under `pipeline/`,
    and tag the version with where: `cifar10-mlops checkout <model URI>` restores the
    workspace from them and the DVC cache or remote."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = result["run_id"]
    for path in (params, lock):
        if path.is_file():
            client.log_artifact(run_id, str(path), PIPELINE_ARTIFACTS)
    for path in outputs:
        if path.is_file():
            folder = PurePosixPath(PIPELINE_ARTIFACTS, "outputs", path.parent.as_posix())
            client.log_artifact(run_id, str(path), str(folder))
    uri = f"runs:/{run_id}/{PIPELINE_ARTIFACTS}"
    client.set_model_version_tag(result["model_name"], result["version"], PIPELINE_TAG, uri)


def _by_alias(client, name: str, alias: str):
    """The version of `name` holding `alias`, or None (also when `name` is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, run_info="train's run.json", metrics="evaluate's metrics.json",
        model="train's model.keras", lock="dvc.lock, for lineage", out="registry.json to write",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cfg = load_params(args.params).register
    require_files(
        args.run_info, args.metrics, args.model, hint="run the train and evaluate stages first"
    )
    run_info = json.loads(args.run_info.read_text())
    metrics = json.loads(args.metrics.read_text())
    lineage = {
        "git_commit": tracking.git_commit(),
        "model_md5": file_digest(args.model, "md5"),  # = the train stage's out in dvc.lock
        "dvc_lock_sha256": lock_digest(args.lock),
    }
    tracking.connect(run_info["tracking_uri"])
    result = register(cfg, run_info["run_id"], metrics, lineage, run_info["tracking_uri"])
    write_json(args.out, result)
    keep_pipeline_state(result, args.params, args.lock, uncached_outputs(DVC_YAML))
    print(
        f"{result['model_name']} v{result['version']} ({', '.join(result['aliases'])}): "
        f"{result['reason']} -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
