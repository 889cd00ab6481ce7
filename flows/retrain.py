"""Prefect flow `retrain`: the DVC pipeline as one task per stage, recorded as a DVC experiment,
then a report.

Each task runs `dvc repro --single-item <stage>` in the working directory: DVC runs the stage's
command (the stage code in src/cifar10_mlops), skips it when nothing it depends on changed, and
records it in dvc.lock. What a run changed (params.yaml, dvc.lock, metrics, plot data) is then
saved as the DVC experiment `retrain-<date>-<flow run name>` (`dvc exp save`), pushed with
`dvc exp push` when the repository has a git remote (the outputs go to the DVC remote,
DVC_REMOTE or .dvc/config's default; without a git remote, `dvc push` sends them), and the
workspace is put back as the last commit left
it: nothing uncommitted or staged stays behind, `dvc status` is clean, and the registered
version's tags name the experiment (`dvc exp apply <name>` brings it into the workspace).

The flow adds what DVC does not do: a check that the MLflow and Prefect servers answer and the
workspace has no uncommitted changes before anything runs, a `dvc pull` of what dvc.lock names
from the DVC remote (when one is set: a worker in a new checkout recomputes only what changed),
retries of the download, the
stages' output in Prefect's logs, the flow run's id on every MLflow run it makes, and a
markdown artifact with the test metrics, the registry's promotion decision, the experiment and
links to the MLflow run and model version (at MLFLOW_UI_URL, else the tracking server, else
http://127.0.0.1:$MLFLOW_PORT, `make mlflow-ui`'s).

  python -m flows.retrain [--force] [--epochs N] [--set train.dropout=0.2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from cifar10_mlops.ops import notify
from cifar10_mlops.core import tracking
from cifar10_mlops.ops.prefect_server import check_prefect
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.overrides import apply_params
from cifar10_mlops.core.repo import (
    changed_files, dvc, dvc_checked, dvc_env, dvc_remote_set, git, has_commit, redact,
    remote_args,
)  # fmt: skip
from cifar10_mlops.stages.register import uncached_outputs
from cifar10_mlops.core.settings import PARAMS_FILE

PARAMS, DVC_YAML = PARAMS_FILE, Path("dvc.yaml")
# Stages whose failures can be transient (a network download); the others fail for reasons a
# retry cannot fix, and a failed stage leaves nothing half-written to retry over.
RETRIES = {"download": 3}
# `force` reruns training and what follows it; the search reruns only when its inputs change.
FORCED_FROM = "train"


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
    env = dvc_env()
    if flow_run.id:  # the stages tag their MLflow runs with it (tracking.orchestration_tags)
        env["PREFECT__FLOW_RUN_ID"] = str(flow_run.id)
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
    if proc.wait() != 0:  # the stage's own line (error: ...) says more than DVC's (ERROR: ...)
        errors = [x for x in lines if x.startswith("error:")]
        errors = errors or [x for x in lines if x.startswith("ERROR")] or lines[-1:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}): {errors[-1]}")
    return not any(f"Stage '{stage}' didn't change" in x for x in lines)


def mlflow_ui(tracking_uri: str) -> str:
    """Where a person opens the MLflow UI of `tracking_uri`: MLFLOW_UI_URL when set, the
    tracking server itself, else `make mlflow-ui` on MLFLOW_PORT (5000)."""
    configured = os.environ.get("MLFLOW_UI_URL", "").strip()
    if configured:
        return configured.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '').strip() or 5000}"


def check_workspace() -> bool:
    """Whether the run can be recorded as a DVC experiment: a git repository with a commit
    (False: the registered version's `pipeline/` artifacts are the only record). A run ends by
    putting the workspace back as that commit left it: refuse to start where that would throw
    away someone's uncommitted changes."""
    if not has_commit():
        return False
    if git("var", "GIT_COMMITTER_IDENT", check=False) == "":
        raise PipelineError(
            "git has no user.name and user.email here: a retrain commits its DVC experiment "
            "(git config --global user.name ...; git config --global user.email ...)"
        )
    changed = changed_files()
    if changed:
        raise PipelineError(
            f"uncommitted changes to {', '.join(changed[:5])}: commit or stash them first (a "
            "retrain records what it changed as a DVC experiment, then resets the workspace)"
        )
    return True


def pipeline_paths() -> set[str]:
    """What a run may change among git's files: params.yaml, dvc.lock, dvc.yaml's `cache:
    false` outputs (and the .gitignore files DVC keeps beside outputs)."""
    return {str(PARAMS), "dvc.lock", *(str(p) for p in uncached_outputs(DVC_YAML))}


def foreign_changes() -> list[str]:
    """Changed tracked files that the pipeline does not write: someone's work."""
    ours = pipeline_paths()
    return [p for p in changed_files() if p not in ours and not p.endswith(".gitignore")]


def reset_workspace() -> None:
    """The pipeline's files as HEAD has them (unstaged too), new uncached outputs removed, and
    the outputs its dvc.lock names; any other file is left as it is."""
    ours = pipeline_paths()
    changed = [p for p in changed_files() if p in ours or p.endswith(".gitignore")]
    if changed:
        git("reset", "--quiet", "--", *changed)
        git("checkout", "--quiet", "HEAD", "--", *changed)
    untracked = set(git("ls-files", "--others", "--exclude-standard").split("\n"))
    for path in ours & untracked:
        Path(path).unlink(missing_ok=True)
    checked = dvc("checkout", "--quiet")
    if checked.returncode != 0:
        get_run_logger().warning("dvc checkout after the run: %s", checked.stderr.strip())


def is_ancestor(commit: str, of: str) -> bool:
    merge_base = ["git", "merge-base", "--is-ancestor", commit, of]
    return subprocess.run(merge_base, capture_output=True).returncode == 0


@task(task_run_name="advance")
def advance(rev: str) -> str:
    """Fast-forward the checkout to `rev`, fetched from its git remotes: the commit a dataset
    was published as. Refused unless HEAD leads to it (or already has it) and, where the
    checkout follows an upstream branch, that branch has it: an event cannot move a worker
    onto an unreviewed branch."""
    if not re.fullmatch(r"[0-9a-f]{7,40}", rev):
        raise PipelineError(f"rev {rev!r}: expected a commit id (7 to 40 hex digits)")
    if git("remote").split():
        os.environ["GIT_TERMINAL_PROMPT"] = "0"  # a fetch that needs a login fails, not waits
        git("fetch", "--all", "--quiet")
    found = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip()
    if not found:
        raise PipelineError(f"rev {rev}: no such commit here or in the git remotes")
    upstream = git("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}", check=False)
    if upstream.strip() and not is_ancestor(found, upstream.strip()):
        raise PipelineError(
            f"rev {rev}: not on {upstream.strip()}, which this checkout follows: only published "
            "commits of that branch are retrained"
        )
    if is_ancestor(found, "HEAD"):
        return f"HEAD already contains {found[:12]}"
    if not is_ancestor("HEAD", found):
        raise PipelineError(
            f"rev {rev}: not ahead of this checkout's HEAD (it diverged): update the checkout"
        )
    git("merge", "--ff-only", "--quiet", found)
    get_run_logger().info("checkout fast-forwarded to %s", found[:12])
    return f"fast-forwarded to {found[:12]}"


@task(task_run_name="pull")
def pull() -> str:
    """Bring the outputs the checkout's dvc.lock names from the DVC remote (DVC_REMOTE, else
    the default), so that a worker on a new machine does not recompute the stages whose inputs
    did not change; what the remote lacks is recomputed. A remote that fails stops the run:
    what it makes could not be pushed either."""
    logger = get_run_logger()
    if not dvc_remote_set():
        logger.info("no DVC remote: the stages use this checkout's cache only")
        return "no DVC remote"
    pulled = dvc_checked("pull", "--allow-missing", *remote_args())
    summary = (pulled.stdout.strip().splitlines() or ["nothing to pull"])[-1]
    logger.info("dvc pull: %s", summary)
    return summary


@task(task_run_name="record")
def record(registered: bool) -> dict:
    """Save what the run changed as a DVC experiment, push it where a git remote exists, and
    tag the registered version with it; returns what the report says about it."""
    logger = get_run_logger()
    # the `cache: false` outputs git does not track yet (a repository before its first commit
    # of them) go into the experiment too
    untracked = git("ls-files", "--others", "--exclude-standard").split("\n")
    new = [str(p) for p in uncached_outputs(DVC_YAML) if str(p) in untracked]
    foreign = foreign_changes()
    if foreign:
        raise PipelineError(
            f"{', '.join(foreign[:5])} changed during the run, outside what the pipeline "
            "writes: nothing recorded, and the workspace's other files are left as they are"
        )
    if not changed_files() and not new:
        return {"name": None, "note": "nothing changed: the last commit already records it"}
    name = f"retrain-{time.strftime('%Y%m%d-%H%M', time.gmtime())}-{flow_run.name or 'local'}"
    include = [arg for path in new for arg in ("--include-untracked", path)]
    saved = dvc("exp", "save", "--force", "--name", name, "--json", *include)
    if saved.returncode != 0:
        raise PipelineError(f"dvc exp save: {(saved.stderr or saved.stdout).strip()}")
    rev = json.loads(saved.stdout)["ref"]
    result = {"name": name, "rev": rev, "pushed": None, "note": ""}
    remotes = git("remote").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        pushed = dvc("exp", "push", *remote_args(), remote, name)
        if pushed.returncode == 0:
            result["pushed"] = remote
        else:
            result["note"] = f"dvc exp push {remote} failed: " + redact(
                (pushed.stderr.strip().splitlines() or ["no message"])[-1]
            )
            logger.error("%s", result["note"])
    else:
        result["note"] = "kept in this repository (no git remote to push it to)"
        if dvc_remote_set():  # its outputs still reach the remote: `checkout --remote` finds them
            dvc_checked("push", *remote_args())
            result["note"] += "; its outputs pushed to the DVC remote"
    if registered:
        tag_version(result)
    logger.info("recorded as DVC experiment %s (%s) %s", name, rev[:7], result["note"])
    return result


def tag_version(result: dict) -> None:
    """Point the version this run registered at the experiment that records it."""
    import mlflow

    registry = json.loads(stage_paths("register")["out"].read_text())
    tracking.connect(registry["tracking_uri"])
    client = mlflow.MlflowClient()
    tags = {"dvc_experiment": result["name"], "dvc_experiment_rev": result["rev"]}
    if result["pushed"]:
        tags["dvc_experiment_remote"] = result["pushed"]
    for key, value in tags.items():
        client.set_model_version_tag(registry["model_name"], registry["version"], key, value)


@task(task_run_name="report")
def report(ran: dict[str, bool], recorded: dict) -> str:
    """The markdown artifact: what ran, the test metrics, the promotion decision, links."""
    paths = stage_paths("register")
    metrics = json.loads(paths["metrics"].read_text())
    registry = json.loads(paths["out"].read_text())
    run = json.loads(paths["run-info"].read_text())
    ui = mlflow_ui(run["tracking_uri"])
    run_link = f"{ui}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    version_link = f"{ui}/#/models/{registry['model_name']}/versions/{registry['version']}"
    status = dvc("status", "--quiet")
    if recorded["name"]:
        where = f"pushed to `{recorded['pushed']}`" if recorded["pushed"] else recorded["note"]
        experiment = (
            f"- DVC experiment: `{recorded['name']}` ({recorded['rev'][:7]}), {where}; "
            f"`dvc exp apply {recorded['name']}` brings it into a workspace"
        )
    else:
        experiment = f"- DVC experiment: none, {recorded['note']}"
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
            experiment,
            f"- `dvc status`: {'up to date' if status.returncode == 0 else 'CHANGED'}",
        ]
    )
    create_markdown_artifact(
        key="retrain-report", markdown=markdown, description="Metrics and promotion decision"
    )
    if status.returncode != 0:
        get_run_logger().warning("dvc status after the run:\n%s", status.stdout)
    new_champion = registry["champion"] == registry["version"] != registry.get("champion_before")
    if ran.get("register") and new_champion:
        notify.send(
            f"new champion: {registry['model_name']} v{registry['version']}",
            f"test accuracy {metrics['accuracy']:.4f}, weighted F1 {metrics['f1_weighted']:.4f} "
            f"({registry['reason']}); was v{registry.get('champion_before')}. {version_link}",
        )
    return markdown


def check_services() -> None:
    """Fail before anything runs when the MLflow or Prefect server this run needs is down."""
    tracking.check_reachable()
    check_prefect()


NO_GIT = (
    "not a git repository with a commit: this run is recorded only in the registered "
    "version's pipeline/ artifacts (cifar10-mlops checkout), not as a DVC experiment"
)


def override(epochs: int | None, set_params: list[str] | None) -> None:
    """Write the flow's parameter overrides into params.yaml, or refuse them all."""
    overrides = [*(set_params or []), *([f"train.epochs={epochs}"] if epochs is not None else [])]
    if overrides:
        apply_params(overrides)


def run_stages(force: bool) -> dict[str, bool]:
    """Each stage as a task; returns which stages ran."""
    names = stage_names()
    forced = set(names[names.index(FORCED_FROM) :]) if force else set()
    ran = {}
    for stage in names:
        retries = RETRIES.get(stage, 0)
        task_ = repro.with_options(
            name=stage, retries=retries, retry_delay_seconds=exponential_backoff(10)
        )
        ran[stage] = task_(stage, force=stage in forced)
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
    if not check_workspace():
        if rev:
            raise PipelineError(f"rev {rev}: not a git checkout with a commit to move")
        get_run_logger().warning("%s", NO_GIT)
        override(epochs, set_params)
        ran = run_stages(force)
        report(ran, {"name": None, "note": NO_GIT})
        return ran
    if rev:
        advance(rev)
    try:
        override(epochs, set_params)  # refused before anything is pulled or run
        pull()
        ran = run_stages(force)
        recorded = record(registered=ran["register"])
        report(ran, recorded)
    finally:
        try:
            reset_workspace()
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
