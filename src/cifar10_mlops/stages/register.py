"""Stage `register`: add the evaluated model to the MLflow model registry and decide whether it
replaces the champion.

Reads  models/run.json (the training run, which `evaluate` logged the model into),
       reports/metrics.json (test metrics), reports/evaluate/test_predictions.npz (each test
       image's class probabilities), data/prepared (the test split, to re-score a champion
       tested on other images), models/model.keras (for its checksum), dvc.lock (upstream
       stages' checksum), params.yaml `register` and `seed`; dvc.yaml, for the list of the
       `cache: false` outputs it copies into the run.
Writes reports/registry.json: the version, its aliases and the promotion decision with the
       comparison behind it; params.yaml, dvc.lock and dvc.yaml's `cache: false` outputs
       (metrics, plot data, this registry.json) into the version's run
       (`pipeline/<name>/v<version>/`, its digest a param of the run), from which
       `cifar10-mlops checkout <model URI>` restores the pipeline state that made it.

The model becomes a new version of `register.model_name` with the alias `challenger` (the
latest candidate). It also takes `champion` when there is none yet, or when it is better beyond
noise (gate.py): on the same test images, the `register.confidence` interval of its gain over
the champion in test `register.metric` lies above `register.min_delta`. Aliases move; so that
the history survives them, each version keeps its decision in tags (`promotion`,
`promotion_reason`, `gate_*` with the interval, McNemar's p-value, the discordant counts and
the test digest, and `replaced_by` on a champion that lost its alias) and in its description.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from cifar10_mlops.training import gate
from cifar10_mlops.core import artifacts, metric_names, tracking
from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.serving import pyfunc
from cifar10_mlops.core.settings import RegisterConfig, load_params
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.repo import head_commit, uncached_outputs
from cifar10_mlops.core.files import file_digest, require_files, text_digest, write_json
from cifar10_mlops.core.splits import load_split
from cifar10_mlops.core.stage import run_stage, stage_parser

CHAMPION, CHALLENGER = tracking.CHAMPION, tracking.CHALLENGER  # short names in this module
# Where each version's pipeline state goes in its run, and the tag pointing there (checkout)
PIPELINE_ARTIFACTS, PIPELINE_TAG = "pipeline", "pipeline_state"
DVC_YAML = Path("dvc.yaml")
# Test metrics copied into version tags; `register.metric` is one of them.
METRICS = gate.METRICS


def lock_digest(path: Path, stage: str = "register") -> str:
    """sha256 of dvc.lock's entries for every stage but `stage`, as canonical JSON: the
    upstream stages' inputs and outputs, unchanged when DVC records this stage in the file."""
    import yaml

    if not path.is_file():
        return "none"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    stages.pop(stage, None)
    return text_digest(json.dumps(stages, sort_keys=True))


def decide(
    cfg: RegisterConfig, challenger: gate.Predictions, champion, champion_predictions, seed: int
) -> tuple[bool, str, gate.Comparison | None]:
    """Whether the challenger replaces `champion` (a ModelVersion or None), why, and the
    paired comparison behind it (None for a first champion)."""
    if champion is None:
        return True, f"first champion: no version had the {CHAMPION} alias", None
    comparison = gate.compare(
        challenger, champion_predictions, metric=cfg.metric, confidence=cfg.confidence, seed=seed
    )
    c = comparison
    verdict = (
        f"test {cfg.metric} {c.challenger:.4f} vs champion v{champion.version} {c.champion:.4f}, "
        f"gain {c.gain:+.4f}, {c.confidence:.0%} interval [{c.low:+.4f}, {c.high:+.4f}]"
    )
    counts = (
        f"{c.challenger_only} vs {c.champion_only} images right only, McNemar p {c.p_value:.3g}"
    )
    if c.beats(cfg.min_delta):
        return True, f"promoted: {verdict} above {cfg.min_delta:g} ({counts})", c
    return False, f"kept champion: {verdict} not above {cfg.min_delta:g} ({counts})", c


def register(
    cfg: RegisterConfig,
    run_id: str,
    metrics: dict,
    lineage: dict[str, str],
    tracking_uri: str,
    *,
    predictions: gate.Predictions,
    test: tuple,
    seed: int,
) -> dict:
    """Register the model of `run_id` (or reuse its version when it already is one) in the
    store at `tracking_uri`, compare it with the champion on the same test images, move the
    aliases, record the verdict; returns the content of registry.json."""
    import mlflow

    client = mlflow.MlflowClient()
    name = cfg.model_name
    champion = _by_alias(client, name, CHAMPION)
    version = _version_of(client, name, run_id, metrics, lineage)
    description = pyfunc.DESCRIPTION.format(
        name=name, champion=CHAMPION, challenger=CHALLENGER, classes=", ".join(CLASSES),
        max_images=pyfunc.MAX_IMAGES,
    )  # fmt: skip
    client.update_registered_model(name, description=description)
    comparison, rescored = None, None
    if champion is not None and champion.version == version.version:
        promoted, reason = True, f"already {CHAMPION}"
    else:
        theirs = None
        if champion is not None:
            theirs, rescored = gate.champion_predictions(champion, predictions, test)
        promoted, reason, comparison = decide(cfg, predictions, champion, theirs, seed)
    _move_aliases(client, name, version.version, champion, promoted)
    tags = {
        "promotion": CHAMPION if promoted else CHALLENGER,
        "promotion_reason": reason,
        "test_sha256": predictions.test_sha256,
    }
    if comparison is not None:
        tags.update(comparison.as_tags())
        tags["gate_champion_version"] = champion.version
        tags["gate_champion_rescored"] = rescored or "no"
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    if reason != f"already {CHAMPION}":
        client.update_model_version(
            name, version.version, description=describe(promoted, champion, comparison, cfg)
        )
    return _entry(cfg, version.version, run_id, metrics, champion, promoted, reason) | {
        "gate": None if comparison is None else {
            **asdict(comparison), "min_delta": cfg.min_delta, "champion_rescored": rescored,
        },
        # as configured (the embedded store's relative URI), not as resolved on this machine:
        # the file is committed
        "tracking_uri": tracking_uri,
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip


def _move_aliases(client, name: str, version: str, champion, promoted: bool) -> None:
    """`challenger` to the new version; `champion` too when promoted, the old champion's
    version tagged with what replaced it."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted and (champion is None or champion.version != version):
        client.set_registered_model_alias(name, CHAMPION, version)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "replaced_by", version)


def _entry(cfg, version: str, run_id: str, metrics: dict, champion, promoted, reason) -> dict:
    """registry.json's fields about the version and the aliases."""
    return {
        "model_name": cfg.model_name,
        "version": int(version),
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "run_id": run_id,
        "aliases": [CHAMPION, CHALLENGER] if promoted else [CHALLENGER],
        "promoted": promoted,
        "reason": reason,
        "metric": f"test/{cfg.metric}",
        "score": metrics[cfg.metric],
        "champion_before": None if champion is None else int(champion.version),
        "champion": int(version if promoted else champion.version),
    }


def describe(promoted: bool, champion, comparison: gate.Comparison | None, cfg) -> str:
    """The version's description: its verdict in plain sentences."""
    if comparison is None:
        return f"{CHAMPION.title()}: the first version of {cfg.model_name}, so nothing to beat."
    head = (
        f"Promoted to {CHAMPION} over v{champion.version}."
        if promoted
        else f"Not promoted: v{champion.version} stays {CHAMPION}."
    )
    return f"{head} {comparison.sentence(cfg.min_delta)}"


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
    best_val = metric_names.SUMMARY["best_val_accuracy"]
    if best_val in run.data.metrics:
        tags["val_accuracy"] = f"{run.data.metrics[best_val]:.6f}"
    tags.update(lineage)
    tags.update(
        {
            k: run.data.tags[k]
            for k in ("data_sha256", "hparams_source", "weights_sha256")
            if k in run.data.tags
        }
    )
    try:
        source = run.data.tags.get("model_uri", f"runs:/{run_id}/model")  # set by evaluate
        return mlflow.register_model(source, name, tags=tags)
    except MlflowException as exc:
        raise PipelineError(f"cannot register the model of run {run_id}: {exc.message}") from None


def state_folder(name: str, version: str | int, digest: str) -> str:
    """A folder per version and state (its digest's first 12 hex digits): register rerun
    alone (other register params) registers the run again, as this version or another."""
    return f"{PIPELINE_ARTIFACTS}/{name}/v{version}/{digest[:12]}"


def keep_pipeline_state(result: dict, params: Path, lock: Path, outputs: list[Path]) -> None:
    """Log params.yaml, dvc.lock (the stages before this one) and the uncached outputs (under
    `outputs/<their path>`) into the version's run under state_folder(), record their digest
    as the run's param artifacts.state_key() and tag the version with where: `cifar10-mlops
    checkout <model URI>` checks and restores the workspace from them."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id, name, version = result["run_id"], result["model_name"], result["version"]
    with tempfile.TemporaryDirectory(prefix="cifar10-state-") as tmp:
        state = Path(tmp) / "state"
        places = {params: "params.yaml", lock: "dvc.lock"}  # the names checkout restores
        for path in [params, lock, *outputs]:
            if path.is_file():
                copy = state / places.get(path, Path("outputs", path))
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
        digest = artifacts.tree_sha256(state)
        folder = state_folder(name, version, digest)
        client.log_artifacts(run_id, str(state), folder)
        uri = f"runs:/{run_id}/{folder}"
        artifacts.verified(uri, digest, Path(tmp) / "stored", f"{name} v{version}")
    client.log_param(run_id, artifacts.state_key(folder), digest)
    client.set_model_version_tag(name, version, PIPELINE_TAG, uri)


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
        predictions="evaluate's test_predictions.npz", data="prepare's output folder",
        model="train's model.keras", lock="dvc.lock, for lineage", out="registry.json to write",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.register
    require_files(
        args.run_info, args.metrics, args.predictions, args.model,
        hint="run the train and evaluate stages first",
    )  # fmt: skip
    run_info = json.loads(args.run_info.read_text())
    metrics = json.loads(args.metrics.read_text())
    predictions = gate.load_predictions(args.predictions)
    test = load_split(args.data, "test")
    if predictions.test_sha256 != gate.test_digest(*test):
        raise PipelineError(
            f"{args.predictions} was made on other test images than {args.data}'s: "
            "rerun the evaluate stage"
        )
    lineage = {
        "git_commit": head_commit(),
        "model_md5": file_digest(args.model, "md5"),  # = the train stage's out in dvc.lock
        "dvc_lock_sha256": lock_digest(args.lock),
    }
    tracking.connect(run_info["tracking_uri"])
    result = register(
        cfg, run_info["run_id"], metrics, lineage, run_info["tracking_uri"],
        predictions=predictions, test=test, seed=params.seed,
    )  # fmt: skip
    write_json(args.out, result)
    keep_pipeline_state(result, args.params, args.lock, uncached_outputs(DVC_YAML))
    print(
        f"{result['model_name']} v{result['version']} ({', '.join(result['aliases'])}): "
        f"{result['reason']} -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
