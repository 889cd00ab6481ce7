"""`cifar10-mlops checkout MODEL_URI`: put the workspace back in the pipeline state that made a
registered model version.

The `register` stage logs params.yaml, dvc.lock and registry.json into each version's run
(`pipeline/`) and tags the version with where they are. checkout resolves the URI to one
version (`models:/cifar10-cnn@champion`, `models:/cifar10-cnn/3`, `models:/cifar10-cnn/latest`),
downloads those files, writes them over the workspace's and restores every output dvc.lock
names from the DVC cache, or from the remote (`dvc pull`) when the cache lacks them. Then
`dvc status` is clean and models/model.keras has the version's `model_md5`.

Refused, with the workspace untouched: a URI that names no version, a version without the
pipeline artifacts, params.yaml or dvc.lock with uncommitted changes (unless --force), outputs
that neither the cache nor the remote has (the previous files come back).

The code is the workspace's: checkout names the version's git commit when HEAD differs, for
`git checkout <commit>` first when the stages' code changed since.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops.core import artifacts, tracking
from cifar10_mlops.core.settings import PARAMS_FILE, params_from_dict
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.repo import head_commit
from cifar10_mlops.core.files import file_digest, replacing
from cifar10_mlops.core.repo import changed_files, dvc, error_line, has_commit
from cifar10_mlops.core.repo import uncached_outputs
from cifar10_mlops.stages.register import DVC_YAML, PIPELINE_TAG, state_folder

PARAMS, LOCK = PARAMS_FILE, Path("dvc.lock")
COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")
# DVC's repository lock (zc.lockfile: an flock on this file), held by `dvc repro` while it runs
DVC_LOCK = Path(".dvc/tmp/lock")


def resolve(uri: str):
    """The ModelVersion a `models:/` URI names now."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = tracking.model_version(uri, mlflow.MlflowClient())
    except MlflowException as exc:
        reason = str(exc.message).splitlines()[0]
        raise PipelineError(
            f"{uri}: no such model version in {tracking.tracking_uri()} ({reason})"
        ) from None
    if version is None:
        raise PipelineError(
            f"{uri}: not a registered model version (models:/NAME@ALIAS, models:/NAME/VERSION "
            "or models:/NAME/latest)"
        )
    return version


def fetch_state(version, dest: Path) -> Path:
    """Download the version's pipeline artifacts into `dest`; returns their folder."""
    import mlflow

    label = f"{version.name} v{version.version}"
    where = version.tags.get(PIPELINE_TAG)
    if not where:
        raise PipelineError(
            f"{label} has no {PIPELINE_TAG} tag: it was registered before versions kept their "
            "params.yaml and dvc.lock, or not by the register stage"
        )
    # Only ever the version's own run: a tag pointing elsewhere (another host, file:///, a
    # foreign run) would send the client's MLflow credentials there or restore a foreign state.
    own = f"runs:/{version.run_id}/{state_folder(version.name, version.version, '')}"
    digest = where.removeprefix(own)
    if not (where.startswith(own) and re.fullmatch(r"[0-9a-f]{12}", digest)):
        raise PipelineError(
            f"{label}: its {PIPELINE_TAG} tag is {where!r}, expected {own}<12 hex digits>"
        )
    want = mlflow.MlflowClient().get_run(version.run_id).data.params
    folder = where.removeprefix(f"runs:/{version.run_id}/")
    local = artifacts.verified(where, want.get(artifacts.state_key(folder)), dest, label)
    missing = [n for n in (PARAMS.name, LOCK.name) if not (local / n).is_file()]
    if missing:
        raise PipelineError(f"{label}: {where} lacks {', '.join(missing)}")
    return local


def check_state(state: Path, label: str) -> None:
    """The downloaded params.yaml must be valid params and dvc.lock must name only dvc.yaml's
    stages, before either replaces the workspace's."""
    import yaml

    try:
        params = yaml.safe_load((state / PARAMS.name).read_text())
        if not isinstance(params, dict):
            raise ConfigError("params.yaml is not a mapping")
        params_from_dict(params)
        lock = yaml.safe_load((state / LOCK.name).read_text()) or {}
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{label}: its pipeline state is not valid ({reason})") from None
    stages = set((yaml.safe_load(DVC_YAML.read_text()) or {}).get("stages", {}))
    unknown = set(lock.get("stages", {}) if isinstance(lock, dict) else ["?"]) - stages
    if unknown:
        raise PipelineError(
            f"{label}: its dvc.lock names stages dvc.yaml lacks: {', '.join(sorted(unknown))}"
        )


def restorable(state: Path) -> dict[Path, Path]:
    """Workspace file -> its copy in `state`: params.yaml, dvc.lock and those of dvc.yaml's
    `cache: false` outputs the version kept (no other path, whatever the artifacts hold)."""
    files = {PARAMS: state / PARAMS.name, LOCK: state / LOCK.name}
    for path in uncached_outputs(DVC_YAML):
        copy = state / "outputs" / path
        if copy.is_file():
            files[path] = copy
    return files


def uncommitted(paths: list[Path]) -> list[str]:
    """Which of `paths` differ from git's HEAD; outside git, each that exists (nothing tells
    whether it holds work of its own)."""
    if not has_commit():
        return [str(p) for p in paths if p.exists()]
    return changed_files(*paths)


def restore_outputs(remote: str | None) -> None:
    """Check out what dvc.lock names from the cache, pulling what the cache lacks."""
    checked = dvc("checkout", "--quiet")
    if checked.returncode == 0:
        return
    pulled = dvc("pull", "--quiet", *(["--remote", remote] if remote else []))
    if pulled.returncode != 0:
        reason = error_line(pulled.stderr + pulled.stdout)
        raise PipelineError(f"cannot restore the outputs dvc.lock names: {reason}")


def checkout(uri: str, *, force: bool = False, remote: str | None = None) -> dict:
    """Restore the pipeline state of the version `uri` names; returns what was restored."""
    if not DVC_YAML.is_file():
        raise PipelineError(f"no {DVC_YAML} here: run checkout in the repository's root folder")
    tracking.connect()
    version = resolve(uri)
    label = f"{version.name} v{version.version}"
    with tempfile.TemporaryDirectory(prefix="cifar10-checkout-") as tmp:
        state = fetch_state(version, Path(tmp) / "state")
        check_state(state, label)
        files = restorable(state)
        changed = [] if force else uncommitted(list(files))
        if changed:
            raise PipelineError(
                f"{', '.join(changed)} changed since the last commit: commit or stash them, or "
                "pass --force to overwrite them"
            )
        with dvc_lock():
            pass  # a running `dvc repro` is refused before anything is touched
        backup = Path(tmp) / "backup"
        backup.mkdir()
        kept = {}
        for i, path in enumerate(files):
            if path.is_file():
                kept[path] = backup / str(i)
                shutil.copy2(path, kept[path])
        try:
            with dvc_lock():  # no `dvc repro` may run while its params and lock change
                for path, copy in files.items():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with replacing(path) as new:
                        shutil.copyfile(copy, new)
            restore_outputs(remote)
            # dvc.lock was saved while `register` ran, before DVC recorded register itself:
            # record it now, from the restored registry.json.
            committed = dvc("commit", "--force", "--quiet", "register")
            if committed.returncode != 0:
                raise PipelineError(f"dvc commit register: {committed.stderr.strip()}")
            md5 = check_model(version, label)
        except BaseException as exc:
            problems = roll_back(files, kept)
            if problems and isinstance(exc, PipelineError):
                raise PipelineError(
                    f"{exc}; and the workspace may be inconsistent: {'; '.join(problems)}"
                ) from None
            raise
    return {"version": version, "label": label, "model_md5": md5}


@contextmanager
def dvc_lock():
    """Hold DVC's repository lock, or refuse in one line when a DVC command holds it."""
    DVC_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(DVC_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                "a DVC command (dvc repro?) holds this repository's lock: wait for it to end, "
                "then run checkout again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_model(version, label: str) -> str:
    """models/model.keras's md5, which must be the one the restored dvc.lock names (checked
    against the run's record before it was restored) and the version's `model_md5` tag: a
    version without that tag (someone deleted it) or with another one is refused."""
    model = Path("models/model.keras")
    locked = locked_md5(model)
    tag = version.tags.get("model_md5")
    if not tag:
        raise PipelineError(
            f"{label} has no model_md5 tag, so the restored model cannot be checked against it"
        )
    if tag != locked:
        raise PipelineError(f"{label}: its model_md5 tag {tag} is not its dvc.lock's {locked}")
    md5 = file_digest(model, "md5") if model.is_file() else None
    if md5 != locked:
        raise PipelineError(f"{model} has md5 {md5} after the checkout, {label} has {locked}")
    return md5


def locked_md5(path: Path) -> str | None:
    """The md5 that dvc.lock records for the output `path`, or None."""
    import yaml

    stages = (yaml.safe_load(LOCK.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("path") == path.as_posix():
                return out.get("md5")
    return None


def roll_back(files: dict[Path, Path], kept: dict[Path, Path]) -> list[str]:
    """Put back each file as it was and the outputs its dvc.lock names; returns what failed."""
    problems = []
    for path in files:
        try:
            if path in kept:
                with replacing(path) as new:
                    shutil.copyfile(kept[path], new)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
    checked = dvc("checkout", "--quiet")
    if checked.returncode != 0:
        problems.append(f"dvc checkout: {(checked.stderr or checked.stdout).strip()[:200]}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops checkout", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("uri", help="models:/NAME@ALIAS, models:/NAME/VERSION or /latest")
    parser.add_argument("--force", action="store_true", help="overwrite uncommitted changes")
    parser.add_argument(
        "--remote", default=os.environ.get("DVC_REMOTE") or None,
        help="DVC remote to pull missing outputs from (default: DVC_REMOTE, else .dvc/config's)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    done = checkout(args.uri, force=args.force, remote=args.remote)
    version = done["version"]
    print(
        f"{args.uri} -> {done['label']} (run {version.run_id}): params.yaml, dvc.lock and its "
        f"outputs restored; models/model.keras md5 {done['model_md5']}"
    )
    commit = version.tags.get("git_commit", "")
    head = head_commit()
    if not COMMIT.fullmatch(commit):  # a tag is anyone's text: never echoed as a command
        print(f"note: {done['label']}'s git_commit tag is not a commit id: {commit[:60]!r}")
    elif commit.removesuffix("-dirty") != head.removesuffix("-dirty"):
        print(
            f"note: {done['label']} was made at commit {commit}; this workspace's code is "
            f"{head}. `git checkout {commit.removesuffix('-dirty')}` first for the exact code."
        )
