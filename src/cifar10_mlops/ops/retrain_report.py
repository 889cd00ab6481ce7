"""The retrain flow's report: what ran, the test metrics, the promotion decision, the DVC
experiment and links to the MLflow run and model version, as one markdown page (a Prefect
artifact), and the notification a new champion sends."""

from __future__ import annotations

import json
import os
from pathlib import Path


def mlflow_ui(tracking_uri: str) -> str:
    """Where a person opens the MLflow UI of `tracking_uri`: MLFLOW_UI_URL when set, the
    tracking server itself, else `make mlflow-ui` on MLFLOW_PORT (5000)."""
    configured = os.environ.get("MLFLOW_UI_URL", "").strip()
    if configured:
        return configured.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '').strip() or 5000}"


def experiment_line(recorded: dict) -> str:
    """The DVC experiment a run was saved as, or why there is none."""
    if not recorded["name"]:
        return f"- DVC experiment: none, {recorded['note']}"
    where = f"pushed to `{recorded['pushed']}`" if recorded["pushed"] else recorded["note"]
    return (
        f"- DVC experiment: `{recorded['name']}` ({recorded['rev'][:7]}), {where}; "
        f"`dvc exp apply {recorded['name']}` brings it into a workspace"
    )


def build(ran: dict[str, bool], recorded: dict, paths: dict[str, Path], up_to_date: bool) -> dict:
    """The report of a run from the register stage's files (`paths`: its --metrics, --out and
    --run-info): {"markdown", "news"}, news being the new champion's notification (or None)."""
    metrics = json.loads(paths["metrics"].read_text())
    registry = json.loads(paths["out"].read_text())
    run = json.loads(paths["run-info"].read_text())
    ui = mlflow_ui(run["tracking_uri"])
    run_link = f"{ui}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    model, version = registry["model_name"], registry["version"]
    version_link = f"{ui}/#/models/{model}/versions/{version}"
    markdown = "\n".join([
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
        f"**{model} v{version}**, aliases {', '.join(registry['aliases'])}: "
        f"{registry['reason']}. Champion: v{registry['champion']}.",
        "",
        f"- MLflow run: [{run['run_id']}]({run_link})",
        f"- Model version: [{model} v{version}]({version_link})",
        experiment_line(recorded),
        f"- `dvc status`: {'up to date' if up_to_date else 'CHANGED'}",
    ])  # fmt: skip
    news = None
    if ran.get("register") and registry["champion"] == version != registry.get("champion_before"):
        news = (
            f"new champion: {model} v{version}",
            f"test accuracy {metrics['accuracy']:.4f}, weighted F1 {metrics['f1_weighted']:.4f} "
            f"({registry['reason']}); was v{registry.get('champion_before')}. {version_link}",
        )
    return {"markdown": markdown, "news": news}
