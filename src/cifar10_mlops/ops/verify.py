"""`cifar10-mlops verify MODEL_URI`: rebuild a registered version's weights from its recorded
pipeline state and say in one line whether they are the same, bit for bit.

In a scratch git worktree of the version's commit (HEAD's when this clone lacks that commit),
with the version's params.yaml and dvc.lock (the `pipeline/` artifacts that checkout restores),
verify takes the `train` stage's inputs (data/prepared, models/best_hparams.json) from the DVC
cache or remote and reruns `train` (with --tune, `tune` first) into a throwaway MLflow store.
The rebuilt model.keras's weights SHA-256 must equal the version's `weights_sha256` tag;
its md5, the version's `model_md5` (dvc.lock's).

Training repeats bit for bit with params.yaml's `deterministic: true`, on the same hardware,
TensorFlow build and thread count; elsewhere floating-point sums can round differently. Exit
status: 0 when the weights match, 1 when they differ or cannot be rebuilt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cifar10_mlops.core import tracking
from cifar10_mlops.ops.checkout import LOCK, PARAMS, check_state, fetch_state, resolve
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import file_digest
from cifar10_mlops.core.repo import (
    add_worktree, commit_exists, dvc_env, error_line, git, redact, remove_worktree,
)  # fmt: skip
from cifar10_mlops.training.weights import file_weights_sha256

MODEL = Path("models/model.keras")
INPUTS = ("data/prepared", "models/best_hparams.json")  # what `train` reads from upstream


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or dvc_env())


def checked(cmd: list[str], cwd: Path, what: str, env: dict | None = None) -> str:
    result = run(cmd, cwd, env)
    if result.returncode != 0:
        raise PipelineError(f"{what}: {redact(error_line(result.stderr + result.stdout))}")
    return result.stdout


def code_commit(version) -> tuple[str, str | None]:
    """The commit whose code rebuilds `version`, and a note when it is not the version's own."""
    recorded = version.tags.get("git_commit", "unknown")
    commit = recorded.removesuffix("-dirty")
    if commit != "unknown" and commit_exists(commit):
        note = None
        if recorded.endswith("-dirty"):
            note = (
                f"it was trained from uncommitted changes to {commit[:12]}; rebuilt from the commit"
            )
        return commit, note
    head = git("rev-parse", "HEAD").strip()
    return head, f"its commit {recorded[:12]} is not in this clone; rebuilt with HEAD's code"


def worktree(commit: str, dest: Path) -> None:
    """A detached git worktree of `commit` at `dest` sharing this repository's DVC cache and
    local DVC config (remote credentials)."""
    add_worktree(dest, commit)
    local = Path(".dvc/config.local")
    if local.is_file():
        shutil.copyfile(local, dest / ".dvc/config.local")
    cache = checked([sys.executable, "-m", "dvc", "cache", "dir"], Path.cwd(), "dvc cache dir")
    checked(
        [sys.executable, "-m", "dvc", "cache", "dir", "--local", cache.strip()], dest,
        "dvc cache dir",
    )  # fmt: skip


def rebuild(version, work: Path, store: Path, *, with_tune: bool, remote: str | None) -> Path:
    """Rerun `train` (and `tune` first, `with_tune`) for `version` in the worktree `work`;
    returns the rebuilt model.keras."""
    label = f"{version.name} v{version.version}"
    state = fetch_state(version, store.parent / "state")
    check_state(state, label)
    for name in (PARAMS, LOCK):
        shutil.copyfile(state / name.name, work / name)
    dvc = [sys.executable, "-m", "dvc"]
    targets = [*INPUTS[:1]] if with_tune else [*INPUTS]
    if run([*dvc, "checkout", "--quiet", *targets], work).returncode != 0:
        pull = [*dvc, "pull", "--quiet", *(["--remote", remote] if remote else []), *targets]
        checked(pull, work, f"{label}'s inputs are in neither the DVC cache nor the remote")
    env = {
        **dvc_env(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",  # the rebuild's runs stay out of the team's
        "PYTHONPATH": str(work / "src"),  # the version's code, not this checkout's
    }
    for stage in ("tune", "train") if with_tune else ("train",):
        print(f"verify: rerunning {stage} for {label} ...", file=sys.stderr, flush=True)
        repro = [*dvc, "repro", "--force", "--single-item", "--no-commit", stage]
        result = run(repro, work, env)
        if result.returncode != 0:
            reason = redact(error_line(result.stderr + result.stdout))
            raise PipelineError(f"{label}: the {stage} stage failed in the rebuild: {reason}")
    return work / MODEL


def verify(uri: str, *, with_tune: bool = False, remote: str | None = None) -> dict:
    """Rebuild the version `uri` names and compare; returns what was compared."""
    tracking.connect()
    version = resolve(uri)
    label = f"{version.name} v{version.version}"
    want = version.tags.get("weights_sha256")
    if not want:
        raise PipelineError(
            f"{label} has no weights_sha256 tag: it was registered before versions recorded "
            "their weights' digest, so there is nothing to compare with"
        )
    commit, note = code_commit(version)
    with tempfile.TemporaryDirectory(prefix="cifar10-verify-") as tmp:
        work = Path(tmp) / "work"
        worktree(commit, work)
        try:
            model = rebuild(
                version, work, Path(tmp) / "mlflow.db", with_tune=with_tune, remote=remote
            )
            got, md5 = file_weights_sha256(model), file_digest(model, "md5")
        finally:
            remove_worktree(work)
    return {
        "label": label, "commit": commit, "note": note, "match": got == want,
        "weights_sha256": got, "registered_sha256": want,
        "model_md5": md5, "registered_md5": version.tags.get("model_md5"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops verify", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("uri", help="models:/NAME@ALIAS, models:/NAME/VERSION or /latest")
    parser.add_argument(
        "--tune", action="store_true", help="rerun the search too, not only the training"
    )
    parser.add_argument(
        "--remote", default=os.environ.get("DVC_REMOTE") or None,
        help="DVC remote to pull missing inputs from (default: DVC_REMOTE, else .dvc/config's)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    done = verify(args.uri, with_tune=args.tune, remote=args.remote)
    if done["note"]:
        print(f"note: {done['note']}")
    same_file = done["model_md5"] == done["registered_md5"]
    if done["match"]:
        print(
            f"{args.uri} -> {done['label']}: rebuilt weights match, sha256 "
            f"{done['weights_sha256'][:16]} (model.keras md5 "
            f"{'as registered' if same_file else 'differs: ' + done['model_md5']})"
        )
        return
    print(
        f"{args.uri} -> {done['label']}: rebuilt weights DIFFER, sha256 "
        f"{done['weights_sha256'][:16]} vs registered {done['registered_sha256'][:16]}"
    )
    sys.exit(1)
