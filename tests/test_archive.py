"""Unpacking an archive (core/archive.py): members that would leave the target folder, links,
modes, and bombs (too many members, too many bytes, huge headers) refused while streaming,
before their bytes are written."""

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from cifar10_mlops.core.archive import extract
from cifar10_mlops.core.errors import PipelineError
from helpers import add_bytes, evil_tar, file_member, link_member, zeros_tar


def test_without_tarfiles_data_filter_the_same_rules_hold(tmp_path, monkeypatch):
    """Python before 3.11.4 (Debian 12's 3.11.2, the compose stand-in's) has no 'data'
    filter: unsafe members are still refused, and modes and owners are made safe."""
    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.delattr(tarfile, "FilterError")
    with pytest.raises(PipelineError, match="unsafe archive member .*path leaves the target"):
        extract(evil_tar(tmp_path / "evil.tar.gz", file_member("../escaped.txt")), tmp_path / "e")
    archive = tmp_path / "modes.tar"
    with tarfile.open(archive, "w") as tar:
        for name, mode in (("cifar10/run.sh", 0o4777), ("cifar10/data.bin", 0o666)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.uname = 1, mode, 4242, "someone"
            tar.addfile(info, io.BytesIO(b"x"))
    extract(archive, tmp_path / "x")
    assert (tmp_path / "x/cifar10/run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "x/cifar10/data.bin").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "x/cifar10/run.sh").stat().st_uid == os.getuid()


def test_link_inside_the_archive_is_allowed(tmp_path):
    archive = evil_tar(
        tmp_path / "ok.tar.gz", link_member("cifar10/train/cat/0001.png", "0000.png")
    )
    extract(archive, tmp_path / "x")
    assert (tmp_path / "x" / "cifar10/train/cat/0001.png").read_bytes() == b"x"


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_member_over_the_size_limit_is_refused_before_it_is_written(tmp_path):
    from cifar10_mlops.core.archive import MAX_MEMBER_BYTES

    archive = zeros_tar(tmp_path / "bomb.tar.gz", {"cifar10/big.bin": MAX_MEMBER_BYTES + 1})
    assert archive.stat().st_size < 1 << 20  # a small archive
    target = tmp_path / "x"
    with pytest.raises(PipelineError) as err:
        extract(archive, target)
    assert str(err.value) == (
        f"bomb.tar.gz: member 'cifar10/big.bin' unpacks to {MAX_MEMBER_BYTES + 1:,} bytes, "
        f"over the limit of {MAX_MEMBER_BYTES:,} per member"
    )
    assert not target.exists() or tree_bytes(target) == 0


def test_archive_over_the_total_limit_stops_at_the_member_that_crosses_it(tmp_path, monkeypatch):
    from cifar10_mlops.core import archive

    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 3 << 20)
    names = {f"cifar10/{i}.bin": 1 << 20 for i in range(6)}
    archive = zeros_tar(tmp_path / "many.tar.gz", names)
    target = tmp_path / "x"
    with pytest.raises(PipelineError, match=r"unpacks to more than 3,145,728 bytes \(the limit\), "
                       r"refused at 'cifar10/3.bin'"):  # fmt: skip
        extract(archive, target)
    assert tree_bytes(target) <= 3 << 20


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members_are_refused_while_reading_them(tmp_path, monkeypatch, kind):
    from cifar10_mlops.core import archive

    monkeypatch.setattr(archive, "MAX_MEMBERS", 50)
    archive = tmp_path / f"many.{kind}"
    if kind == "tar":
        with tarfile.open(archive, "w") as tar:
            for i in range(200):
                add_bytes(tar, f"cifar10/{i}.png", b"x")
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(200):
                zf.writestr(f"cifar10/{i}.png", b"x")
    target = tmp_path / "x"
    message = {  # a zip's count is read from its end record, before anything is written
        "tar": r"many.tar: more than 50 members .*refused at 'cifar10/50.png'",
        "zip": r"many.zip: 200 members, more than 50 \(the limit",
    }[kind]
    with pytest.raises(PipelineError, match=message):
        extract(archive, target)
    assert len(list(target.rglob("*.png"))) <= (50 if kind == "tar" else 0)


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path):
    """tarfile reads a pax header whole: 100 MB of it would be 100 MB of memory."""
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
        info = tarfile.TarInfo("cifar10/a.png")
        info.pax_headers = {"comment": "x" * 100_000_000}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(PipelineError, match=r"an extended header of 100,000,\d+ bytes, over the "
                       r"limit of 65,536"):  # fmt: skip
        extract(archive, tmp_path / "x")


def test_a_stream_over_the_budget_stops_while_it_is_read(tmp_path, monkeypatch):
    """Whatever tarfile reads counts, headers included: a member's declared size cannot lie."""
    from cifar10_mlops.core import archive as module

    monkeypatch.setattr(module, "_HEADER_SLACK", 0)
    monkeypatch.setattr(module, "MAX_TOTAL_BYTES", 5000)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "cifar10/a.bin", bytes(4000))
        add_bytes(tar, "cifar10/b.bin", bytes(900))
    with pytest.raises(PipelineError, match=r"a.tar: unpacks to more than 5,000 bytes with its "
                       r"headers"):  # fmt: skip
        extract(archive, tmp_path / "x")


@pytest.mark.parametrize(
    "target, says",
    [("", "a link with no target"), ("é\x00b", "a NUL byte in its name or link")],  # é: pax
)
def test_links_tarfile_cannot_make_are_one_line_not_a_traceback(tmp_path, target, says):
    """Found by tests/test_properties.py: an empty target made tarfile look the link up in
    the archive (a RecursionError on a stream), a NUL byte made os.symlink raise ValueError."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("images/cat.png")
        link.type, link.linkname = tarfile.SYMTYPE, target
        tar.addfile(link)
    archive = tmp_path / "a.tar"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(PipelineError) as err:
        extract(archive, tmp_path / "out")
    assert str(err.value) == f"unsafe archive member 'images/cat.png': {says}"
