"""Prefect flow `retrain`: the DVC pipeline as one task per stage, saved as a DVC experiment,
then a report.

Each stage task runs `dvc repro --single-item <stage>`, which skips what did not change.
Around them the flow checks that the MLflow and Prefect servers answer and that the workspace
is clean, pulls what dvc.lock names from the DVC remote, retries the download, saves what the
run changed as the DVC experiment `retrain-<date>-<flow run>` (pushed where a git remote
exists, `dvc exp apply` brings it back), tags the registered version with it, puts the
workspace back as its commit left it, and leaves a markdown report (ops/retrain_report.py).
Every git and DVC command is core/repo.py's.

  python -m flows.retrain [--force] [--epochs N] [--set train.dropout=0.2 ...] [--rev COMMIT]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run
from prefect.tasks import exponential_backoff

from cifar10_mlops.core import repo, tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.repo import check_workspace, dvc, dvc_env, git
from cifar10_mlops.core.settings import PARAMS_FILE
from cifar10_mlops.ops import backlog, notify, retrain_report
from cifar10_mlops.ops.overrides import apply_flow_params
from cifar10_mlops.ops.pool import REGISTER_LIMIT
from cifar10_mlops.ops.prefect_server import check_services

PARAMS, DVC_YAML = PARAMS_FILE, Path("dvc.yaml")
# Stages whose failures can be transient (a network download); the others fail for reasons a
# retry cannot fix, and a failed stage leaves nothing half-written to retry over.
RETRIES = {"download": 3}
# `force` reruns training and what follows it; the search reruns only when its inputs change.
FORCED_FROM = "train"


@task(task_run_name="{stage}")
def repro(stage: str, force: bool = False) -> bool:
    """`dvc repro --single-item <stage>`, its output into the run's log; True when it ran."""
    logger = get_run_logger()
    # dvc.yaml's commands call `python`: the interpreter (virtual environment) running this flow.
    env = dvc_env()
    if flow_run.id:  # the stages tag their MLflow runs with it (tracking.orchestration_tags)
        env["PREFECT__FLOW_RUN_ID"] = str(flow_run.id)
    return repo.dvc_repro(stage, force=force, env=env, log=lambda line: logger.info("%s", line))


@task(task_run_name="advance")
def advance(rev: str) -> str:
    """Fast-forward the checkout to `rev`, the commit a dataset was published as, where HEAD
    leads to it on the branch this checkout follows (repo.fast_forward)."""
    done = repo.fast_forward(rev)
    get_run_logger().info("checkout %s", done)
    return done


@task(task_run_name="pull")
def pull() -> str:
    """The outputs dvc.lock names, from the DVC remote: a worker on a new machine recomputes
    only what changed. A remote that fails stops the run: nothing could be pushed to it."""
    summary = repo.pull_outputs()
    get_run_logger().info("dvc pull: %s", summary)
    return summary


@task(task_run_name="record")
def record(registered: bool) -> dict:
    """Save what the run changed as a DVC experiment, push it where a git remote exists, and
    tag the registered version with it; returns what the report says about it."""
    logger = get_run_logger()
    new = repo.untracked_outputs(DVC_YAML)  # they go into the experiment too
    foreign = repo.foreign_changes(PARAMS, DVC_YAML)
    if foreign:
        raise PipelineError(
            f"{', '.join(foreign[:5])} changed during the run, outside what the pipeline "
            "writes: nothing recorded, and the workspace's other files are left as they are"
        )
    if not repo.changed_files() and not new:
        return {"name": None, "note": "nothing changed: the last commit already records it"}
    name = f"retrain-{time.strftime('%Y%m%d-%H%M', time.gmtime())}-{flow_run.name or 'local'}"
    result = repo.save_experiment(name, new)
    if result["note"].startswith("dvc exp push"):
        logger.error("%s", result["note"])
    if registered:  # the version this run registered points at the experiment recording it
        tags = {"dvc_experiment": name, "dvc_experiment_rev": result["rev"]}
        tags |= {"dvc_experiment_remote": result["pushed"]} if result["pushed"] else {}
        tracking.tag_registered_version(repo.stage_paths(DVC_YAML, "register")["out"], tags)
    logger.info("recorded as DVC experiment %s (%s) %s", name, result["rev"][:7], result["note"])
    return result


@task(task_run_name="report")
def report(ran: dict[str, bool], recorded: dict) -> str:
    """The markdown artifact (retrain_report.build) and, for a new champion, a notification."""
    status = dvc("status", "--quiet")
    built = retrain_report.build(
        ran, recorded, repo.stage_paths(DVC_YAML, "register"), status.returncode == 0
    )
    create_markdown_artifact(
        key="retrain-report", markdown=built["markdown"], description="Metrics and promotion"
    )
    if status.returncode != 0:
        get_run_logger().warning("dvc status after the run:\n%s", status.stdout)
    if built["news"]:
        notify.send(*built["news"])
    return built["markdown"]


NO_GIT = (
    "not a git repository with a commit: this run is recorded only in the registered "
    "version's pipeline/ artifacts (cifar10-mlops checkout), not as a DVC experiment"
)


def trim_backlog() -> None:
    """Under a deployment, cancel the published-data runs waiting beyond ops/backlog.py's
    cap, and say so in the run's log."""
    if not deployment.id:
        return
    from prefect import get_client

    with get_client(sync_client=True) as client:
        own = UUID(flow_run.id)
        cancelled = backlog.trim(client, UUID(deployment.id), own)
    if cancelled:
        get_run_logger().warning(
            "cancelled %d waiting retrains for published data, over the cap of %d: %s",
            len(cancelled), backlog.MAX_WAITING, ", ".join(map(str, cancelled)),
        )  # fmt: skip


def run_stages(force: bool) -> dict[str, bool]:
    """Each stage as a task; returns which stages ran."""
    names = repo.dvc_stages(DVC_YAML)
    forced = set(names[names.index(FORCED_FROM) :]) if force else set()
    ran = {}
    for stage in names:
        retry = {"retries": RETRIES.get(stage, 0), "retry_delay_seconds": exponential_backoff(10)}
        run = repro.with_options(name=stage, **retry)
        if stage == "register":
            with concurrency(REGISTER_LIMIT, occupy=1):
                ran[stage] = run(stage, force=stage in forced)
        else:
            ran[stage] = run(stage, force=stage in forced)
    return ran


@flow(
    name="retrain", log_prints=True,
    on_failure=[notify.on_failure], on_crashed=[notify.on_failure],
)  # fmt: skip
def retrain(
    force: bool = False,
    epochs: int | None = None,
    set_params: list[str] | None = None,
    rev: str | None = None,
) -> dict[str, bool]:
    """Run the pipeline's stages in order. `force` retrains even when nothing changed;
    `epochs` (train.epochs) and `set_params` (["train.dropout=0.2", ...]) change params.yaml
    first, like `dvc exp run -S`. None keeps params.yaml's values. `rev` (a commit, as
    `publish-data`'s event gives it) first fast-forwards the checkout to it."""
    check_services()
    trim_backlog()
    if not check_workspace():
        if rev:
            raise PipelineError(f"rev {rev}: not a git checkout with a commit to move")
        get_run_logger().warning("%s", NO_GIT)
        apply_flow_params(epochs, set_params)
        ran = run_stages(force)
        report(ran, {"name": None, "note": NO_GIT})
        return ran
    if rev:
        advance(rev)
    try:
        apply_flow_params(epochs, set_params)  # refused before anything is pulled or run
        pull()
        ran = run_stages(force)
        recorded = record(registered=ran["register"])
        report(ran, recorded)
    finally:
        try:
            complaint = repo.reset_workspace(PARAMS, DVC_YAML)
            if complaint:
                get_run_logger().warning("dvc checkout after the run: %s", complaint)
        except PipelineError as exc:  # logged, so that it does not hide the run's own error
            get_run_logger().error("resetting the workspace after the run: %s", exc)
    if recorded["name"] and recorded["pushed"] is None and git("remote").split():
        raise PipelineError(f"the run is recorded in this repository only: {recorded['note']}")
    return ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="retrain even if nothing changed")
    parser.add_argument("--epochs", type=int, help="set train.epochs first")
    parser.add_argument(
        "--set", dest="set_params", action="append", metavar="KEY=VALUE", default=[],
        help="change a params.yaml value first (as dvc exp run -S); repeatable",
    )  # fmt: skip
    parser.add_argument("--rev", help="fast-forward the checkout to this commit first")
    args = parser.parse_args(argv)
    try:
        check_services()  # before Prefect itself tries the server, and retries for minutes
        check_workspace()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    state = retrain(
        force=args.force, epochs=args.epochs, set_params=args.set_params or None, rev=args.rev,
        return_state=True,
    )  # fmt: skip
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
