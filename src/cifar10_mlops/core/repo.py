"""Every git and DVC command the project runs outside DVC's own stages: one way to call them,
read git's changed files and DVC's error line; HEAD's commit for the runs' tags; and the
workspace of a retrain run (a clean start, a fast-forward, the run saved as a DVC experiment,
the pipeline's files put back)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from cifar10_mlops.core.errors import PipelineError


def dvc_env() -> dict[str, str]:
    """The environment with this interpreter's folder first on PATH: dvc.yaml's commands call
    `python`, which must be the virtual environment's."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str) -> subprocess.CompletedProcess:
    """`dvc <args>`, output captured; the caller reads the return code."""
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=dvc_env()
    )


def git(*args: str, check: bool = True) -> str:
    """`git <args>`'s output; a failure is a one-line PipelineError when `check`."""
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise PipelineError(f"git {' '.join(args)}: {result.stderr.strip() or result.stdout}")
    return result.stdout


def has_commit() -> bool:
    """Whether the working directory is in a git repository with at least one commit."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode == 0


def changed_files(*paths: Path | str) -> list[str]:
    """Tracked files (among `paths`, if given) that differ from HEAD, in the worktree or the
    index."""
    status = git("status", "--porcelain", "--untracked-files=no", "--", *map(str, paths))
    return [line[3:] for line in status.splitlines() if line.strip()]


def error_line(output: str) -> str:
    """The line of a DVC or stage output that says what went wrong: the first `ERROR` or
    `error:` line, else the last line."""
    lines = [x for x in output.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith(("ERROR", "error:"))]
    return (errors or lines[-1:] or ["no output"])[0]


def remote_args() -> list[str]:
    """`--remote DVC_REMOTE` when it is set; nothing (DVC's default remote) otherwise."""
    remote = os.environ.get("DVC_REMOTE", "").strip()
    return ["--remote", remote] if remote else []


def dvc_remote_set() -> bool:
    """Whether DVC has a remote to use: DVC_REMOTE, or the repository's default."""
    return bool(remote_args()) or dvc("remote", "default").returncode == 0


def redact(text: str) -> str:
    """A git or DVC message without the credentials a remote's URL may carry."""
    return re.sub(r"://[^/@\s]+@", "://***@", text)


def dvc_checked(*args: str) -> subprocess.CompletedProcess:
    """`dvc <args>`; a failure is a PipelineError `dvc <command>: <DVC's error line>`, without
    credentials."""
    result = dvc(*args)
    if result.returncode != 0:
        reason = redact(error_line(result.stderr or result.stdout))
        raise PipelineError(f"dvc {args[0]}: {reason}")
    return result


def is_ancestor(commit: str, of: str) -> bool:
    """Whether `commit` is `of` or one of its ancestors."""
    merge_base = ["git", "merge-base", "--is-ancestor", commit, of]
    return subprocess.run(merge_base, capture_output=True).returncode == 0


def head_commit() -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        run = dict(capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, **run).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def tracked_files(repo: Path) -> list[str]:
    """The files git tracks in `repo` (a checkout), relative to it."""
    try:
        cmd = ["git", "ls-files", "-z"]
        out = subprocess.run(cmd, cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise PipelineError(f"{repo} is not a git checkout") from None
    return [name for name in out.decode().split("\0") if name and (repo / name).is_file()]


def init_repository(folder: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)


def uncached_outputs(dvc_yaml: Path) -> list[Path]:
    """dvc.yaml's `cache: false` outputs (metrics, plot data, registry.json), in its order:
    git holds them, not the DVC cache or remote, so each version keeps its own copy."""
    if not dvc_yaml.is_file():
        return []
    found = []
    for stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    found += [p for p, v in entry.items() if (v or {}).get("cache") is False]
    return [Path(p) for p in found]


# The workspace of a run that records itself as a DVC experiment (flows/retrain.py): it starts
# from a clean commit and ends by putting the pipeline's files back as that commit left them.


def check_workspace() -> bool:
    """Whether a run can be recorded as a DVC experiment: a git repository with a commit
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


def pipeline_paths(params: Path, dvc_yaml: Path) -> set[str]:
    """What a run may change among git's files: params.yaml, dvc.lock, dvc.yaml's `cache:
    false` outputs (and the .gitignore files DVC keeps beside outputs)."""
    return {str(params), "dvc.lock", *(str(p) for p in uncached_outputs(dvc_yaml))}


def foreign_changes(params: Path, dvc_yaml: Path) -> list[str]:
    """Changed tracked files that the pipeline does not write: someone's work."""
    ours = pipeline_paths(params, dvc_yaml)
    return [p for p in changed_files() if p not in ours and not p.endswith(".gitignore")]


def reset_workspace(params: Path, dvc_yaml: Path) -> str | None:
    """The pipeline's files as HEAD has them (unstaged too), new uncached outputs removed, and
    the outputs its dvc.lock names; any other file is left as it is. Returns what `dvc
    checkout` complained of, if anything."""
    ours = pipeline_paths(params, dvc_yaml)
    changed = [p for p in changed_files() if p in ours or p.endswith(".gitignore")]
    if changed:
        git("reset", "--quiet", "--", *changed)
        git("checkout", "--quiet", "HEAD", "--", *changed)
    untracked = set(git("ls-files", "--others", "--exclude-standard").split("\n"))
    for path in ours & untracked:
        Path(path).unlink(missing_ok=True)
    checked = dvc("checkout", "--quiet")
    return checked.stderr.strip() if checked.returncode != 0 else None


def fast_forward(rev: str) -> str:
    """Fast-forward the checkout to `rev`, fetched from its git remotes. Refused unless HEAD
    leads to it (or already has it) and, where the checkout follows an upstream branch, that
    branch has it. Returns what happened, in words."""
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
    return f"fast-forwarded to {found[:12]}"


def save_experiment(name: str, untracked: list[str]) -> dict:
    """`dvc exp save` the workspace's changes (and the `untracked` outputs) as experiment
    `name`, then push it to the git remote (origin, else the first) where there is one, or
    else its outputs to the DVC remote. Returns name, rev, pushed (the remote or None), note."""
    include = [arg for path in untracked for arg in ("--include-untracked", path)]
    saved = dvc("exp", "save", "--force", "--name", name, "--json", *include)
    if saved.returncode != 0:
        raise PipelineError(f"dvc exp save: {(saved.stderr or saved.stdout).strip()}")
    result = {"name": name, "rev": json.loads(saved.stdout)["ref"], "pushed": None, "note": ""}
    remotes = git("remote").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        pushed = dvc("exp", "push", *remote_args(), remote, name)
        if pushed.returncode == 0:
            result["pushed"] = remote
        else:
            last = (pushed.stderr.strip().splitlines() or ["no message"])[-1]
            result["note"] = f"dvc exp push {remote} failed: " + redact(last)
    else:
        result["note"] = "kept in this repository (no git remote to push it to)"
        if dvc_remote_set():  # its outputs still reach the remote: `checkout --remote` finds them
            dvc_checked("push", *remote_args())
            result["note"] += "; its outputs pushed to the DVC remote"
    return result


def commit_exists(commit: str) -> bool:
    """Whether this clone has `commit`."""
    found = ["git", "cat-file", "-e", f"{commit}^{{commit}}"]
    return subprocess.run(found, capture_output=True).returncode == 0


def add_worktree(dest: Path, commit: str) -> None:
    """A detached worktree of `commit` at `dest`."""
    git("worktree", "add", "--detach", str(dest), commit)


def remove_worktree(path: Path) -> None:
    git("worktree", "remove", "--force", str(path), check=False)


def dvc_stages(dvc_yaml: Path) -> list[str]:
    """dvc.yaml's stages, in its (data-flow) order."""
    return list(yaml.safe_load(dvc_yaml.read_text())["stages"])


def stage_paths(dvc_yaml: Path, stage: str) -> dict[str, Path]:
    """The `--option path` pairs of a stage's command in dvc.yaml, the one home of the paths."""
    args = shlex.split(yaml.safe_load(dvc_yaml.read_text())["stages"][stage]["cmd"])
    return {a[2:]: Path(v) for a, v in zip(args, args[1:]) if a.startswith("--")}


def dvc_repro(stage: str, *, force: bool, env: dict, log: Callable[[str], None]) -> bool:
    """`dvc repro --single-item <stage>`, each line of its output to `log` as it comes; True
    when the stage ran, False when it was up to date; a failure raises with its error line."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] * force)]
    log("$ dvc " + " ".join(cmd[3:]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    lines = []
    for line in proc.stdout:
        if line.strip():  # progress bars redraw with blank lines
            lines.append(line.rstrip())
            log(lines[-1])
    if proc.wait() != 0:  # the stage's own line (error: ...) says more than DVC's (ERROR: ...)
        errors = [x for x in lines if x.startswith("error:")]
        errors = errors or [x for x in lines if x.startswith("ERROR")] or lines[-1:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}): {errors[-1]}")
    return not any(f"Stage '{stage}' didn't change" in x for x in lines)


def untracked_outputs(dvc_yaml: Path) -> list[str]:
    """The `cache: false` outputs git does not track yet (before their first commit)."""
    untracked = git("ls-files", "--others", "--exclude-standard").split("\n")
    return [str(p) for p in uncached_outputs(dvc_yaml) if str(p) in untracked]


def pull_outputs() -> str:
    """`dvc pull --allow-missing` from DVC_REMOTE (else the default remote): its last line of
    output, or "no DVC remote". A remote that fails raises."""
    if not dvc_remote_set():
        return "no DVC remote: the stages use this checkout's cache only"
    pulled = dvc_checked("pull", "--allow-missing", *remote_args())
    return (pulled.stdout.strip().splitlines() or ["nothing to pull"])[-1]
