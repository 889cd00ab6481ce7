"""Prefect flow `drift`: test the window the model server keeps (`serve --sample-dir`) against
the champion's reference, as `cifar10-mlops drift --sample-dir` does (monitoring/check.py),
leave the verdict as a markdown artifact (its table, its picture, its MLflow run) and, on
drift, emit the Prefect event `cifar10.drift.detected`.

The retrain deployment starts on that event when params.yaml `monitor.retrain_on_drift` is true
(flows/deploy.py); it is false by default, so a drift alone retrains nothing until a team
chooses it.

  python -m flows.drift [--sample-dir DIR] [--model URI]   # one test, now
  PREFECT_API_URL=... python -m flows.drift --serve        # hourly: make drift-deployment
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.schedules import Cron

from cifar10_mlops.core import tracking
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.files import write_json
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.monitoring import check, drift as tests
from cifar10_mlops.ops import notify
from cifar10_mlops.serving.sample import VERDICT, WINDOW

EVENT = "cifar10.drift.detected"
OUT = Path("reports/drift")


@task(task_run_name="check-window")
def check_window(model: str, sample_dir: Path) -> dict:
    """Test the server's window; its verdict, also written where the server reads it."""
    result = check.check(model, sample_dir / WINDOW, OUT, PARAMS_FILE)
    verdict = result.verdict.as_dict() | {
        "model": result.model, "checked": time.time(), "mlflow_run": result.run_id,
        "picture": str(result.files[1]),
    }  # fmt: skip
    write_json(sample_dir / VERDICT, verdict)
    return verdict


def markdown(verdict: dict) -> str:
    """The report: the verdict, each test's p-value, the picture and where the run is."""
    word = "**Drift**" if verdict["detected"] else "No drift"
    rows = "\n".join(
        f"| {t} | {verdict['statistics'][t]:.4g} | {verdict['p_values'][t]:.3g} | "
        f"{'drift' if t in verdict['drifted'] else ''} |"
        for t in tests.TESTS
    )
    where = tracking.tracking_uri()
    run = verdict["mlflow_run"]
    if where.startswith(("http://", "https://")):
        base = where.rstrip("/")
        name = Path(verdict["picture"]).name
        picture = f"![drift]({base}/get-artifact?path=drift%2F{name}&run_uuid={run})"
        link = f"[MLflow run {run}]({base}/#/runs/{run})"
    else:
        picture, link = f"Picture: `{verdict['picture']}`", f"MLflow run `{run}` in `{where}`"
    return (
        f"# {word}: {verdict['images']} images against {verdict['model']}'s reference\n\n"
        f"Each of the {len(tests.TESTS)} tests at alpha {verdict['alpha']}/{len(tests.TESTS)}; "
        f"MMD² score {verdict['score']:.4g}.\n\n"
        f"| test | statistic | p-value | |\n|---|---|---|---|\n{rows}\n\n{picture}\n\n{link}\n"
    )


@flow(name="drift", log_prints=True, on_failure=[notify.on_failure])
def drift(sample_dir: str | None = None, model: str | None = None) -> dict:
    """Test the newest images of `sample_dir` (params.yaml monitor.sample_dir) on `model` (the
    champion); emit cifar10.drift.detected when they drifted."""
    params = load_params(PARAMS_FILE)
    folder = Path(sample_dir or params.monitor.sample_dir)
    uri = model or tracking.champion_uri(params.register.model_name)
    verdict = check_window(uri, folder)
    create_markdown_artifact(
        key="drift-report", markdown=markdown(verdict), description="Drift test of the window"
    )
    if verdict["detected"]:
        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"cifar10.model.{params.register.model_name}",
                      "prefect.resource.name": verdict["model"]},
            payload={key: verdict[key] for key in ("model", "score", "p_values", "drifted",
                                                   "images", "mlflow_run")},
        )  # fmt: skip
        print(f"{EVENT}: {', '.join(verdict['drifted'])} drifted ({verdict['model']})")
    return verdict


def deployment_settings() -> dict:
    cfg = load_params(PARAMS_FILE).monitor
    return {
        "name": cfg.deployment,
        "schedules": [Cron(cfg.cron, timezone=cfg.timezone)],
        "description": f"Test the served window {cfg.sample_dir}/{WINDOW} on {cfg.cron!r}",
        "tags": ["cifar10", "drift"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-dir", help="the server's --sample-dir (monitor.sample_dir)")
    parser.add_argument("-m", "--model", help="MLflow model URI (default: the champion)")
    parser.add_argument("--serve", action="store_true", help="serve the scheduled deployment")
    args = parser.parse_args(argv)
    try:
        settings = deployment_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.serve:
        drift.serve(**settings)
        return
    try:
        state = drift(sample_dir=args.sample_dir, model=args.model, return_state=True)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if not state.is_completed():
        sys.exit(1)
    sys.exit(check.DETECTED if state.result()["detected"] else 0)


if __name__ == "__main__":
    main()
