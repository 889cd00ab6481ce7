"""Prefect flow `retrain`: the DVC pipeline as one task per stage, then a report.

Each task runs `dvc repro --single-item <stage>` in the working directory: DVC runs the stage's
command (the stage code in src/cifar10_mlops), skips it when nothing it depends on changed, and
records it in dvc.lock, so after a flow run `dvc status` is clean. The flow adds what DVC does
not do: a check that the MLflow and Prefect servers answer before anything runs, retries of the
download, the stages' output in Prefect's logs, and a markdown artifact with the test metrics,
the registry's promotion decision and links to the MLflow run and model version.

  python -m flows.retrain [--force] [--epochs N] [--set train.dropout=0.2 ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from cifar10_mlops import health, tracking
from cifar10_mlops.config import params_from_dict
from cifar10_mlops.errors import ConfigError, PipelineError
from cifar10_mlops.files import replacing

PARAMS, DVC_YAML = Path("params.yaml"), Path("dvc.yaml")
# Stages whose failures can be transient (a network download); the others fail for reasons a
# retry cannot fix, and a failed stage leaves nothing half-written to retry over.
RETRIES = {"download": 3}
# `force` reruns training and what follows it; the search reruns only when its inputs change.
FORCED_FROM = "train"
MLFLOW_UI = "http://127.0.0.1:5000"  # `make mlflow-ui`; MLFLOW_UI_URL overrides it


def stage_names() -> list[str]:
    """dvc.yaml's stages, in its (data-flow) order."""
    return list(yaml.safe_load(DVC_YAML.read_text())["stages"])


def stage_paths(stage: str) -> dict[str, Path]:
    """The `--option path` pairs of a stage's command in dvc.yaml, the one home of the paths."""
    args = shlex.split(yaml.safe_load(DVC_YAML.read_text())["stages"][stage]["cmd"])
    return {a[2:]: Path(v) for a, v in zip(args, args[1:]) if a.startswith("--")}


@task(task_run_name="{stage}")
def repro(stage: str, force: bool = False) -> bool:
    """`dvc repro --single-item <stage>`, its output into the run's log; True when it ran."""
    logger = get_run_logger()
    # dvc.yaml's commands call `python`: the interpreter (virtual environment) running this flow.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] * force)]
    logger.info("$ dvc %s", " ".join(cmd[3:]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    lines = []
    for line in proc.stdout:
        if line.strip():  # progress bars redraw with blank lines
            lines.append(line.rstrip())
            logger.info("%s", lines[-1])
    if proc.wait() != 0:
        errors = [x for x in lines if x.startswith(("error:", "ERROR"))] or lines[-1:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}): {errors[-1]}")
    return not any(f"Stage '{stage}' didn't change" in x for x in lines)


@task(task_run_name="report")
def report(ran: dict[str, bool]) -> str:
    """The markdown artifact: what ran, the test metrics, the promotion decision, links."""
    paths = stage_paths("register")
    metrics = json.loads(paths["metrics"].read_text())
    registry = json.loads(paths["out"].read_text())
    run = json.loads(paths["run-info"].read_text())
    local_ui = os.environ.get("MLFLOW_UI_URL", MLFLOW_UI)
    ui = run["tracking_uri"] if run["tracking_uri"].startswith("http") else local_ui
    run_link = f"{ui}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    version_link = f"{ui}/#/models/{registry['model_name']}/versions/{registry['version']}"
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--quiet"], capture_output=True, text=True
    )
    markdown = "\n".join(
        [
            "# Retraining report",
            "",
            "| stage | " + " | ".join(ran) + " |",
            "|---|" + "---|" * len(ran),
            "| ran | " + " | ".join("yes" if r else "up to date" for r in ran.values()) + " |",
            "",
            "## Test metrics",
            "",
            "| accuracy | weighted F1 | macro F1 | loss |",
            "|---|---|---|---|",
            f"| {metrics['accuracy']:.4f} | {metrics['f1_weighted']:.4f} | "
            f"{metrics['f1_macro']:.4f} | {metrics['loss']:.4f} |",
            "",
            "## Registry",
            "",
            f"**{registry['model_name']} v{registry['version']}**, aliases "
            f"{', '.join(registry['aliases'])}: {registry['reason']}. "
            f"Champion: v{registry['champion']}.",
            "",
            f"- MLflow run: [{run['run_id']}]({run_link})",
            f"- Model version: [{registry['model_name']} v{registry['version']}]({version_link})",
            f"- `dvc status`: {'up to date' if status.returncode == 0 else 'CHANGED'}",
        ]
    )
    create_markdown_artifact(
        key="retrain-report", markdown=markdown, description="Metrics and promotion decision"
    )
    if status.returncode != 0:
        get_run_logger().warning("dvc status after the run:\n%s", status.stdout)
    return markdown


def apply_params(overrides: list[str]) -> None:
    """Write `key=value` overrides into params.yaml as `dvc exp run -S` does (same grammar),
    so that dvc.lock records them. Each must set a key params.yaml has, to a value of the type
    and range the config expects, else params.yaml is not touched; the new file replaces it in
    one step, so a stage reading it meanwhile never sees a half-written one."""
    from dvc.utils.hydra import apply_overrides

    check_overrides(overrides, yaml.safe_load(PARAMS.read_text()))
    bad = f"bad parameter override {' '.join(overrides)}"
    with replacing(PARAMS) as new:
        shutil.copy(PARAMS, new)  # its mode too
        try:
            apply_overrides(str(new), overrides)
            params_from_dict(yaml.safe_load(new.read_text()))
        except ConfigError as exc:
            raise PipelineError(f"{bad}: {PARAMS}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0]  # DVC wraps Hydra's reason
            raise PipelineError(f"{bad}: {cause}") from None


def check_overrides(overrides: list[str], params: dict) -> None:
    """Refuse an override that adds (`+key=`, `++key=`) or deletes (`~key`) a key, names one
    that params.yaml does not have, or sweeps values: a flow parameter, which anyone allowed
    to start a run can set, changes values only."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    try:
        parsed = to_hydra_overrides(overrides)
    except OverrideParseException as exc:
        reason = str(exc).splitlines()[0]
        raise PipelineError(f"bad parameter override {' '.join(overrides)}: {reason}") from None
    for override in parsed:
        bad = f"bad parameter override {override.input_line}"
        if override.type is not OverrideType.CHANGE:
            raise PipelineError(
                f"{bad}: params.yaml's keys can be set (KEY=VALUE), not added (+KEY=, ++KEY=) "
                "or deleted (~KEY)"
            )
        if override.is_sweep_override():
            raise PipelineError(f"{bad}: one value per key")
        if "${" in override.input_line:  # ${oc.env:...} would copy the environment into params
            raise PipelineError(f"{bad}: interpolations (${{...}}) are not allowed, only values")
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        node, at = params, None
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(node) if isinstance(node, dict) else "a value, no keys"
                raise PipelineError(
                    f"{bad}: params.yaml has no {key} ({at or 'top level'}: {known})"
                )
            node, at = node[part], part if at is None else f"{at}.{part}"


def check_services() -> None:
    """Fail before anything runs when the MLflow or Prefect server this run needs is down."""
    tracking.check_reachable()
    check_prefect()


def check_prefect(timeout: float = 5.0) -> None:
    """The Prefect API named by PREFECT_API_URL answers and takes PREFECT_API_AUTH_STRING
    (nothing to check when unset: Prefect then starts a temporary local server itself)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        health.require(
            url, "Prefect server", "start it (make services), or unset PREFECT_API_URL", timeout
        )
        auth = PREFECT_API_AUTH_STRING.value()  # sent as Prefect's own client sends it
        token = base64.b64encode(auth.encode()).decode() if auth else None
        headers = {"Authorization": f"Basic {token}"} if token else {}
        reason = health.problem(f"{url.rstrip('/')}/hello", timeout, headers)
        if reason is not None:
            raise PipelineError(
                f"Prefect server {url} refused the request ({reason}): set "
                "PREFECT_API_AUTH_STRING to its auth string (`make services` keeps it in "
                ".services/prefect.auth)"
            )


@flow(name="retrain", log_prints=True)
def retrain(
    force: bool = False, epochs: int | None = None, set_params: list[str] | None = None
) -> dict[str, bool]:
    """Run the pipeline's stages in order. `force` retrains even when nothing changed;
    `epochs` (train.epochs) and `set_params` (["train.dropout=0.2", ...]) change params.yaml
    first, like `dvc exp run -S`. None keeps params.yaml's values."""
    check_services()
    overrides = [*(set_params or []), *([f"train.epochs={epochs}"] if epochs is not None else [])]
    if overrides:
        apply_params(overrides)
    names = stage_names()
    forced = set(names[names.index(FORCED_FROM) :]) if force else set()
    ran = {}
    for stage in names:
        retries = RETRIES.get(stage, 0)
        task_ = repro.with_options(
            name=stage, retries=retries, retry_delay_seconds=exponential_backoff(10)
        )
        ran[stage] = task_(stage, force=stage in forced)
    report(ran)
    return ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="retrain even if nothing changed")
    parser.add_argument("--epochs", type=int, help="set train.epochs first")
    parser.add_argument(
        "--set", dest="set_params", action="append", metavar="KEY=VALUE", default=[],
        help="change a params.yaml value first (as dvc exp run -S); repeatable",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        check_services()  # before Prefect itself tries the server, and retries for minutes
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    state = retrain(
        force=args.force, epochs=args.epochs, set_params=args.set_params or None, return_state=True
    )
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
