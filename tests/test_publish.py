"""`cifar10-mlops publish-data`: a new dataset version verified, tracked and pushed with DVC,
committed, and then the pipeline's input; bad archives and missing prerequisites refused
before anything changes."""

import hashlib
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from helpers import add_bytes, error_line, git, git_commit_all, run_dvc, write_image_archive
from helpers import write_python_archive

pytestmark = pytest.mark.integration


@pytest.fixture
def checkout(project, tmp_path, monkeypatch):
    """A committed project copy with a local DVC remote as its default, and no Prefect."""
    remote = tmp_path / "dvc-remote"
    run_dvc(project, "remote", "add", "--local", "--default", "local", str(remote))
    git_commit_all(project, "start")
    for name in ("PREFECT_API_URL", "DVC_REMOTE", "CIFAR10_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    return project, remote


def publish(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.cli", "publish-data", *map(str, args)],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def unchanged(project, head: str, params: str) -> None:
    assert git(project, "rev-parse", "HEAD").strip() == head
    assert (project / "params.yaml").read_text() == params
    assert not (project / "data" / "published").exists()
    assert not (project / "data" / "published.dvc").exists()
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.mark.extended  # a publish and its push: 45 s
@pytest.mark.long(seconds=25)
def test_a_published_archive_becomes_the_pipeline_input_in_one_commit(checkout, tmp_path):
    project, remote = checkout
    archive = write_image_archive(tmp_path / "cifar10-v2.tar.gz", fmt="JPEG")
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    head = git(project, "rev-parse", "HEAD").strip()

    result = publish(project, archive, "--checksum", f"sha256:{sha256}")
    assert result.returncode == 0, result.stderr
    commit = git(project, "rev-parse", "HEAD").strip()
    assert f"published cifar10-v2.tar.gz (images, train 100, test 40 images) as {commit[:12]}" in (
        result.stdout
    )
    assert "PREFECT_API_URL is not set: no event emitted" in result.stdout
    # one commit on top, of exactly the record
    assert git(project, "rev-parse", "HEAD~1").strip() == head
    changed = git(project, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(changed) == ["data/published.dvc", "params.yaml"]
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    download = yaml.safe_load((project / "params.yaml").read_text())["download"]
    assert download["source"] == "data/published/cifar10-v2.tar.gz"
    assert download["checksum"] == f"sha256:{sha256}"
    # tracked by DVC, in the remote, and the copy in the workspace is the archive
    record = yaml.safe_load((project / "data" / "published.dvc").read_text())["outs"][0]
    assert record["path"] == "published" and record["nfiles"] == 1
    assert (project / "data/published/cifar10-v2.tar.gz").read_bytes() == archive.read_bytes()
    cloud = run_dvc(project, "status", "--cloud", "data/published.dvc").stdout
    assert "Cache and remote 'local' are in sync" in cloud
    assert list(remote.rglob("*")), "nothing pushed"

    # the download stage now reads it, even with CIFAR10_SOURCE set (an offline machine's copy
    # of the official archive)
    other = write_image_archive(tmp_path / "official.tar.gz", train_per_class=3, fmt="PNG")
    stage = subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.stages.download", "--out", "data/raw"],
        cwd=project, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CIFAR10_SOURCE": str(other)},
    )  # fmt: skip
    assert stage.returncode == 0, stage.stderr
    assert "CIFAR10_SOURCE ignored: params.yaml names the published dataset" in stage.stdout
    manifest = yaml.safe_load((project / "data/raw/manifest.json").read_text())
    assert manifest["sha256"] == sha256 and manifest["checksum_verified"] == f"sha256:{sha256}"

    # publishing the same archive again changes nothing
    again = publish(project, archive)
    assert again.returncode == 0 and "is already published" in again.stdout
    assert git(project, "rev-parse", "HEAD").strip() == commit


def partial_archive(path, missing: str, keep_folder: bool):
    """The image layout with one class's training images left out, and its folder too
    unless `keep_folder`."""
    full = write_image_archive(path.with_suffix(".full"), fmt="PNG")
    with tarfile.open(full) as source, tarfile.open(path, "w:gz") as tar:
        if keep_folder:
            folder = tarfile.TarInfo(f"cifar10/train/{missing}")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
        for member in source.getmembers():
            if f"/train/{missing}/" not in member.name:
                add_bytes(tar, member.name, source.extractfile(member).read())
    return path


@pytest.mark.extended  # a repository per archive: 2 min
@pytest.mark.long(seconds=25)
def test_bad_archives_are_refused_before_anything_changes(checkout, tmp_path):
    project, remote = checkout
    head, params = git(project, "rev-parse", "HEAD").strip(), (project / "params.yaml").read_text()
    good = write_image_archive(tmp_path / "cifar10-v2.tar.gz")
    not_tar = tmp_path / "notes.tar.gz"
    not_tar.write_bytes(b"not an archive at all")
    spaced = tmp_path / "my data.tar.gz"
    spaced.write_bytes(good.read_bytes())
    cases = {
        "checksum": ((good, "--checksum", "sha256:" + "0" * 64), "checksum mismatch for "
                     "cifar10-v2.tar.gz: sha256 is "),
        "class": ((partial_archive(tmp_path / "no-cats.tar.gz", "cat", keep_folder=True),),
                  "no-cats.tar.gz: class folder train/cat/ has no .png or .jpg images"),
        "labels": ((write_python_archive(tmp_path / "no-trucks.tar.gz", drop_test_class=9),),
                   "no-trucks.tar.gz: no images of test/truck: not a whole CIFAR-10 dataset"),
        "folder": ((partial_archive(tmp_path / "no-dogs.tar.gz", "dog", keep_folder=False),),
                   "no-dogs.tar.gz: missing class folder(s) in train/: dog"),
        "layout": ((not_tar,), "error: notes.tar.gz: "),
        "name": ((spaced,), "error: 'my data.tar.gz': an archive's name may use letters"),
        "missing": ((tmp_path / "nowhere.tar.gz",), "nowhere.tar.gz: no such file"),
    }  # fmt: skip
    for case, (args, expected) in cases.items():
        result = publish(project, *args)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        assert expected in error_line(result), (case, error_line(result))
        assert "Traceback" not in result.stderr, case
        unchanged(project, head, params)
    assert not list(remote.rglob("*.tar.gz")) and not list((project / "data").glob(".publish*"))


@pytest.mark.extended  # repositories, remotes and pushes: 1 min
@pytest.mark.long(seconds=20)
def test_missing_prerequisites_are_refused_and_a_failed_push_is_undone(checkout, tmp_path):
    project, remote = checkout
    head, params = git(project, "rev-parse", "HEAD").strip(), (project / "params.yaml").read_text()
    archive = write_image_archive(tmp_path / "cifar10-v2.tar.gz")

    (project / "params.yaml").write_text(params.replace("seed: 42", "seed: 43"))
    result = publish(project, archive)
    assert error_line(result).startswith("error: uncommitted changes to params.yaml: commit")
    (project / "params.yaml").write_text(params)

    run_dvc(project, "remote", "remove", "--local", "local")
    result = publish(project, archive)
    assert error_line(result).startswith("error: no DVC remote: set DVC_REMOTE or a default")
    unchanged(project, head, params)

    # a remote that cannot be written: DVC's error, and the workspace as before
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the remote's folder should be")
    run_dvc(project, "remote", "add", "--local", "--default", "local", str(blocked))
    result = publish(project, archive)
    assert result.returncode == 1 and error_line(result).startswith("error: dvc push: ")
    unchanged(project, head, params)


def test_a_killed_runs_folder_is_swept_and_a_reused_pid_collides_with_nothing(
    checkout, tmp_path, monkeypatch
):
    """A run killed mid-copy leaves up to 1 GiB under data/; the next run removes it. The
    folder under this process's own pid (as a killed run of the same pid named it) is no
    collision: the run's folder has a random part."""
    from cifar10_mlops.ops import publish as module

    project, _ = checkout
    monkeypatch.chdir(project)
    killed = project / "data" / ".published-99999-abc123"
    (killed / "published").mkdir(parents=True)
    (killed / ".lock").touch()  # its process is gone: nobody holds the lock
    (killed / "published" / "cifar10-v1.tar.gz").write_bytes(bytes(1 << 20))
    (project / "data" / f".published-{os.getpid()}").mkdir()  # the same pid, named as before
    archive = write_image_archive(tmp_path / "cifar10-v2.tar.gz", fmt="PNG")
    module.main([str(archive)])
    assert (project / "data" / "published" / "cifar10-v2.tar.gz").is_file()
    assert not killed.exists()
    left = sorted(p.name for p in (project / "data").glob(".published-*"))
    assert left == [f".published-{os.getpid()}"]  # not the run's own: that is gone too


@pytest.mark.extended  # a publish and its push: 1.5 min
@pytest.mark.long(seconds=30)
def test_only_the_publish_commit_is_pushed_never_other_work(checkout, tmp_path):
    """A commit of the user's own, not pushed yet, must not go to the team's branch with the
    dataset: publishing is refused until it is pushed (or dropped), then pushes one commit."""
    project, _ = checkout
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True)
    branch = git(project, "branch", "--show-current").strip()
    git(project, "remote", "add", "origin", str(origin))
    git(project, "push", "--quiet", "--set-upstream", "origin", branch)
    (project / "NOTES.md").write_text("work in progress\n")
    git(project, "add", "NOTES.md")
    git(project, "commit", "--quiet", "-m", "my unfinished work")
    mine = git(project, "rev-parse", "HEAD").strip()
    params = (project / "params.yaml").read_text()
    archive = write_image_archive(tmp_path / "cifar10-v2.tar.gz")

    result = publish(project, archive)
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: 1 commit(s) not pushed to origin/{branch} yet ({mine[:12]}): push or drop "
        "them first; publish-data pushes its own commit only, and the workers fetch the branch"
    )
    unchanged(project, mine, params)
    assert mine not in git(origin, "rev-list", branch)

    git(project, "reset", "--quiet", "--hard", "HEAD~1")  # the user drops it
    result = publish(project, archive)
    assert result.returncode == 0, result.stderr
    assert f"pushed to origin/{branch}" in result.stdout
    published = git(project, "rev-parse", "HEAD").strip()
    assert git(origin, "rev-parse", branch).strip() == published

    # a push the remote refuses: the commit stays here, and --announce pushes it again later
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    newer = write_image_archive(tmp_path / "cifar10-v3.tar.gz", train_per_class=3)
    result = publish(project, newer)
    assert result.returncode == 1 and "here, but " in error_line(result)
    hook.unlink()
    result = publish(project, newer, "--announce")
    assert result.returncode == 0, result.stderr
    assert "is already published" in result.stdout and f"pushed to origin/{branch}" in result.stdout
    assert git(origin, "rev-parse", branch).strip() == git(project, "rev-parse", "HEAD").strip()
