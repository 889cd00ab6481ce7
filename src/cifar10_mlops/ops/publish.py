"""`cifar10-mlops publish-data ARCHIVE`: a new version of the dataset becomes the pipeline's input.

1. Verify, changing nothing until every check passes: the download stage's own checks (size
   cap, `--checksum` when the provider gave one, safe extraction, layout, class names) and
   images of every class in both splits.
2. Record: the archive becomes the one file of data/published/, tracked by DVC
   (data/published.dvc), and params.yaml's `download.source` and `download.checksum` (its
   sha256) name it, so that `dvc repro` reruns from `download` (which then prefers it to
   CIFAR10_SOURCE).
3. Share: `dvc push` of it to the DVC remote, one git commit of params.yaml and
   data/published.dvc (and data/.gitignore, where DVC writes one), and `git push` when the
   branch has an upstream.
   A failure before the commit puts those files and data/published/ back as they were.
4. Announce: the Prefect event `cifar10.dataset.published` (when PREFECT_API_URL is set), with
   the commit in its payload; the retrain deployment's trigger starts a retrain at it
   (flows/deploy.py).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
from pathlib import Path

from cifar10_mlops.core import dataset
from cifar10_mlops.stages import download
from cifar10_mlops.core.archive import extract
from cifar10_mlops.core.validation import checked, valid_checksum
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import scratch
from cifar10_mlops.ops.overrides import apply_params
from cifar10_mlops.ops.prefect_server import check_prefect
from cifar10_mlops.core.repo import changed_files, dvc, dvc_checked, dvc_remote_set, git, has_commit
from cifar10_mlops.core.repo import remote_args
from cifar10_mlops.core.settings import PARAMS_FILE

PUBLISHED = Path(download.PUBLISHED)
DVC_FILE = PUBLISHED.with_suffix(".dvc")
PARAMS = PARAMS_FILE
RECORDED = (PARAMS, DVC_FILE, PUBLISHED.parent / ".gitignore")
EVENT = "cifar10.dataset.published"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_file(archive: Path, checksum: str | None) -> None:
    """What can be checked before copying the archive: it exists, its name, its size."""
    if not archive.is_file():
        raise PipelineError(f"{archive}: no such file")
    if not _NAME.fullmatch(archive.name):
        raise PipelineError(
            f"{archive.name!r}: an archive's name may use letters, digits, '.', '_' and '-' "
            "(it becomes part of params.yaml's download.source)"
        )
    if checksum:
        checked("--checksum", valid_checksum, checksum)
    download.check_size(str(archive), archive.stat().st_size)


def verify(archive: Path, checksum: str | None) -> dict:
    """The archive's digests, format and image counts, once it passes every check."""
    download.check_size(str(archive), archive.stat().st_size)
    found = download.verify(archive, checksum)
    with scratch(PUBLISHED.parent, ".publish") as tmp:
        try:
            extract(archive, tmp / "extracted")
            layout = dataset.find_layout(tmp / "extracted")
            counts = download.count_images(layout)
        except PipelineError as exc:
            message = str(exc)
            if not message.startswith(archive.name):
                message = f"{archive.name}: {message}"
            raise PipelineError(message) from None
    empty = [f"{split}/{name}" for split, c in counts.items() for name, n in c.items() if not n]
    if empty:
        raise PipelineError(
            f"{archive.name}: no images of {', '.join(empty[:4])}"
            f"{' and more' if len(empty) > 4 else ''}: not a whole CIFAR-10 dataset"
        )
    return {**found, "format": layout.kind, "counts": counts}


def current_sha256() -> str | None:
    """The sha256 params.yaml names for the published dataset, if it names one."""
    import yaml

    cfg = yaml.safe_load(PARAMS.read_text())["download"]
    if not download.is_published(str(cfg.get("source", ""))):
        return None
    checksum = str(cfg.get("checksum") or "")
    return checksum.removeprefix("sha256:") if checksum.startswith("sha256:") else None


def check_ready(again: bool = False) -> None:
    """What publishing needs, checked before anything changes. `again` (--announce) lets
    HEAD be unpushed when HEAD is the last publication, which it pushes again."""
    if not PARAMS.is_file() or not Path("dvc.yaml").is_file():
        raise PipelineError("run publish-data in the project's root (no params.yaml, dvc.yaml)")
    if not has_commit():
        raise PipelineError("not a git repository with a commit: publishing commits the dataset")
    changed = changed_files(*RECORDED)
    if changed:
        raise PipelineError(
            f"uncommitted changes to {', '.join(changed)}: commit or stash them first "
            "(publishing commits these files)"
        )
    if not dvc_remote_set():
        raise PipelineError(
            "no DVC remote: set DVC_REMOTE or a default remote (make remote-local), where "
            "the dataset goes for the team and the retraining workers"
        )
    ahead = unpushed()
    last = git("log", "-1", "--format=%H", "--", str(DVC_FILE)).strip() if again else None
    if ahead and ahead != [last]:
        raise PipelineError(
            f"{len(ahead)} commit(s) not pushed to {upstream_branch()[0]} yet "
            f"({', '.join(c[:12] for c in ahead[:3])}): push or drop them first; publish-data "
            "pushes its own commit only, and the workers fetch the branch"
        )
    check_prefect()  # when PREFECT_API_URL is set: the event will reach it


def upstream_branch() -> tuple[str, str, str] | None:
    """(upstream as git names it, remote, its branch) of the current branch, or None."""
    upstream = git("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}", check=False).strip()
    if not upstream:
        return None
    remote = git("config", f"branch.{git('branch', '--show-current').strip()}.remote").strip()
    return upstream, remote, upstream.removeprefix(f"{remote}/")


def unpushed() -> list[str]:
    """The commits HEAD has that its upstream branch lacks (none without an upstream)."""
    if upstream_branch() is None:
        return []
    return git("rev-list", "@{u}..HEAD").split()


def record(staged: Path, archive: Path, found: dict) -> str:
    """Place `staged` (a folder holding only the verified copy `archive`) as data/published,
    track, name and push it, then commit; returns the commit. A failure before the commit
    restores what it changed."""
    try:
        shutil.rmtree(PUBLISHED, ignore_errors=True)
        staged.rename(PUBLISHED)
        dvc_checked("add", str(PUBLISHED))
        apply_params(
            [f"download.source='{PUBLISHED.as_posix()}/{archive.name}'",
             f"download.checksum='sha256:{found['sha256']}'"],
            PARAMS,
        )  # fmt: skip
        dvc_checked("push", *remote_args(), str(DVC_FILE))
        paths = [str(path) for path in RECORDED if path.exists()]  # DVC's .gitignore, if made
        git("add", "--", *paths)
        message = f"Publish dataset {archive.name} (sha256 {found['sha256'][:12]})"
        git("commit", "--quiet", "-m", message, "--", *paths)
    except BaseException:
        _restore()
        raise
    return git("rev-parse", "HEAD").strip()


def _restore() -> None:
    """params.yaml, data/published.dvc and data/.gitignore as HEAD has them, and
    data/published/ as that .dvc file names it (or gone)."""
    in_head = set(git("ls-tree", "-r", "--name-only", "HEAD", "--", *map(str, RECORDED)).split())
    for path in RECORDED:
        git("reset", "--quiet", "--", str(path), check=False)  # DVC's autostage staged it
        if str(path) in in_head:
            git("checkout", "--quiet", "HEAD", "--", str(path), check=False)
        else:
            path.unlink(missing_ok=True)
    shutil.rmtree(PUBLISHED, ignore_errors=True)
    if DVC_FILE.is_file() and dvc("checkout", "--quiet", str(DVC_FILE)).returncode != 0:
        print(f"warning: {PUBLISHED} not restored from the DVC cache: `dvc pull {DVC_FILE}`")


def share(commit: str) -> str:
    """`git push` of `commit` alone (its parent is the upstream's tip: check_ready refused
    unpushed commits) when the current branch tracks an upstream; what happened, in words."""
    found = upstream_branch()
    if found is None:
        return "no upstream branch: the commit stays here (git push it for remote workers)"
    upstream, remote, branch = found
    try:
        git("push", "--quiet", remote, f"{commit}:refs/heads/{branch}")
    except PipelineError as exc:  # git's own message spans lines
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PipelineError(
            f"published as commit {commit[:12]} here, but {reason[:300]}: push it "
            "(publish-data ARCHIVE --announce), and retrain there"
        ) from None
    return f"pushed to {upstream}"


def announce(archive: str, found: dict, commit: str) -> str | None:
    """Emit the event, when a Prefect server is configured; its id."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    event = Event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"cifar10.dataset.{found['sha256']}",
            "prefect.resource.name": archive,
        },
        payload={
            "rev": commit,
            "archive": archive,
            "sha256": found["sha256"],
            "md5": found["md5"],
            "format": found["format"],
            "images": {split: sum(c.values()) for split, c in found["counts"].items()},
        },
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    try:
        asyncio.run(send())
    except Exception as exc:  # the websocket's errors have no common base
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise PipelineError(
            f"published as commit {commit[:12]}, but the event could not reach the Prefect "
            f"server {PREFECT_API_URL.value()}: {reason}"
        ) from None
    return str(event.id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops publish-data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("archive", type=Path, help="the dataset archive (tar or zip)")
    parser.add_argument(
        "--checksum", help="its digest as the provider gives it (sha256:HEX or md5:HEX)"
    )
    parser.add_argument(
        "--announce", action="store_true",
        help="when it is already published: push and announce it again (after a failed try)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    check_ready(again=args.announce)
    check_file(args.archive, args.checksum)
    # data/.published-<pid>-<random>/published (data/.gitignore: /.*-*), locked while this
    # runs: what a killed run left is swept by the next one, and no pid can collide
    with scratch(PUBLISHED.parent, f".{PUBLISHED.name}") as work:
        staged = work / PUBLISHED.name
        staged.mkdir()
        commit, copy, found = stage(staged, args)
    if commit is None:
        return
    print(share(commit))
    event = announce(copy.name, found, commit)
    if event is None:
        print("PREFECT_API_URL is not set: no event emitted (a scheduled retrain will use it)")
    else:
        print(f"event {EVENT} {event} emitted: the retrain deployment's trigger starts a retrain")


def stage(staged: Path, args) -> tuple[str | None, Path, dict]:
    """Copy, verify and record the archive from `staged`; (the commit, or None when it is
    already published and not to be announced again, the copy, its digests and counts)."""
    try:
        copy = staged / args.archive.name  # what is verified is what is committed
        shutil.copyfile(args.archive, copy)
        found = verify(copy, args.checksum)
        if found["sha256"] == current_sha256():
            commit = git("log", "-1", "--format=%H", "--", str(DVC_FILE)).strip()
            print(f"{copy.name} (sha256 {found['sha256'][:12]}) is already published: {commit}")
            if not args.announce:
                return None, copy, found
        else:
            commit = record(staged, copy, found)
            images = ", ".join(f"{s} {sum(c.values())}" for s, c in found["counts"].items())
            print(f"published {copy.name} ({found['format']}, {images} images) as {commit[:12]}")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return commit, copy, found
