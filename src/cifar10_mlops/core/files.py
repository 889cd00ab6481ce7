"""The file idioms every stage shares: write atomically, work in a scratch folder, digest a
file.

A stage's output is written to a temporary sibling and moved into place in one step, so a
reader (the next stage, DVC, a person) never sees a half-written file, and a killed stage
leaves the previous version or nothing. Scratch folders carry their process id, so whatever
a killed process (kill -9, the OOM killer) left behind is removed by the next one: a live
process holds a lock on its folder, which the kernel releases when it dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError

_CHUNK = 1 << 20  # bytes read at a time when hashing
LOCK = ".lock"  # in a scratch folder: held by its process while it runs


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; it replaces `path` in one step on success, and
    is removed on failure, so a reader never sees a half-written file. Its name is random (and
    keeps the suffix, which writers such as Keras and numpy check): two writers never share
    one, and a link planted in advance cannot point the write elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder `<parent>/<prefix>-<pid>-<random>`, removed on exit. Its process holds a
    lock on it while it runs; on entry, the `<prefix>-*` folders whose lock nobody holds (a
    killed process's) are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent, prefix)
    with tempfile.TemporaryDirectory(
        dir=parent, prefix=f"{prefix}-{os.getpid()}-", ignore_cleanup_errors=True
    ) as tmp:
        with open(Path(tmp) / LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel when the process dies
            yield Path(tmp)


def sweep(parent: Path, prefix: str, unlocked_after: float = 3600.0) -> list[Path]:
    """Remove the scratch folders under `parent` that no running process holds; returns
    them. The lock, not the pid, says who runs: pids repeat, and containers sharing a volume
    each have their own. A folder without its lock file (one being made, or older than
    locks) is removed only once `unlocked_after` seconds old."""
    pattern = re.compile(rf"{re.escape(prefix)}-\d+-")
    removed = []
    for entry in parent.iterdir():
        if not pattern.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        if _abandoned(entry, unlocked_after):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _abandoned(folder: Path, unlocked_after: float) -> bool:
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return time.time() - folder.stat().st_mtime > unlocked_after
    except OSError:  # another user's, or not ours to judge
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its process runs
        return False
    finally:
        os.close(fd)
    return True


def require_files(*paths: Path, hint: str) -> None:
    """An input a stage needs is missing: `<path> not found: <hint>` (say what makes it)."""
    for path in paths:
        if not path.is_file():
            raise PipelineError(f"{path} not found: {hint}")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through `replacing`."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    """`data` as indented JSON with a final newline, written atomically."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def file_digests(path: Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of a file by each of `algorithms` (hashlib names), in one read."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for digest in hashes.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in hashes.items()}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """One hex digest of a file."""
    return file_digests(path, algorithm)[algorithm]


def text_digest(text: str) -> str:
    """sha256 of a string, as hex."""
    return hashlib.sha256(text.encode()).hexdigest()
