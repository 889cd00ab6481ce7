"""The git and DVC commands that tools outside the stages (`checkout`, the retrain flow) run
in the repository: one way to call them, to read git's changed files and DVC's error line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
