"""Extracting an archive that anyone may have made, shared by `download` and `prepare`.

A tar (plain, gzip, bzip2 or xz) is read as one stream, one member at a time: each member is
checked before anything of it is written, and every decompressed byte, headers included,
counts against a budget, so neither a million members nor a 10 GiB member nor a huge header
can exhaust the disk or the memory. A zip's directory lists every size up front. Refused:
paths that leave the target folder, links pointing out of it, hard links, devices and fifos,
and archives over the limits below; each refusal is one line naming the limit and the member.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import struct
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cifar10_mlops.core.errors import PipelineError

# What an archive may unpack to: CIFAR-10 as python batches is 8 files of at most 31 MB
# (178 MB in all); as image files, 60,000 images of a few KB plus their folders. Room for any
# reasonable copy (PNG, BMP), none for a bomb.
MAX_MEMBERS = 70_000
MAX_MEMBER_BYTES = 64 << 20  # 64 MiB
MAX_TOTAL_BYTES = 1 << 30  # 1 GiB
# Tar headers and padding on top of the members' bytes: at most 1 KiB per member, and an
# extended (pax, GNU long-name) header of at most 64 KiB, which tarfile reads whole.
_HEADER_SLACK = 1024 * MAX_MEMBERS + (1 << 20)
MAX_HEADER_BYTES = 64 << 10
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)  # fmt: skip
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


def check_member(name: str, link: str | None, link_target: str | None, is_special: bool) -> None:
    """Refuse absolute or parent paths, devices, hard links, and symlinks resolving outside
    the archive. `link` is "sym" (target relative to the member's folder), "hard" or None."""
    if "\x00" in name + (link_target or ""):  # pax headers can hold one; no path can
        raise PipelineError(f"unsafe archive member {name!r}: a NUL byte in its name or link")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise PipelineError(f"unsafe archive member {name!r}: path leaves the target folder")
    if is_special:
        raise PipelineError(f"unsafe archive member {name!r}: device or fifo")
    if link == "hard":  # CIFAR-10 has none; tarfile resolves them by reading every header
        raise PipelineError(f"unsafe archive member {name!r}: hard link to {link_target!r}")
    if link and not link_target:  # tarfile would try to resolve it inside the archive
        raise PipelineError(f"unsafe archive member {name!r}: a link with no target")
    if link:
        target = posixpath.normpath(PurePosixPath(name).parent / (link_target or ""))
        if (link_target or "").startswith("/") or target.split("/")[0] == "..":
            raise PipelineError(
                f"unsafe archive member {name!r}: link to {link_target!r} points outside"
            )


class Limits:
    """Running totals of an extraction, refused as soon as one exceeds its limit: checked on
    each member's declared size before anything of it is written."""

    def __init__(self, archive: str):
        self.archive, self.members, self.bytes = archive, 0, 0

    def add(self, name: str, size: int) -> None:
        self.members += 1
        self.bytes += size
        if self.members > MAX_MEMBERS:
            raise PipelineError(
                f"{self.archive}: more than {MAX_MEMBERS:,} members (the limit; CIFAR-10 has "
                f"60,000 images), refused at {name!r}"
            )
        if size > MAX_MEMBER_BYTES:
            raise PipelineError(
                f"{self.archive}: member {name!r} unpacks to {size:,} bytes, over the limit of "
                f"{MAX_MEMBER_BYTES:,} per member"
            )
        if self.bytes > MAX_TOTAL_BYTES:
            raise PipelineError(
                f"{self.archive}: unpacks to more than {MAX_TOTAL_BYTES:,} bytes (the limit), "
                f"refused at {name!r}"
            )


class _CheckedTarInfo(tarfile.TarInfo):
    """A tar header that refuses an extended header over MAX_HEADER_BYTES before tarfile
    reads it into memory."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise PipelineError(
                f"unsafe archive member {self.name!r}: an extended header of {self.size:,} "
                f"bytes, over the limit of {MAX_HEADER_BYTES:,}"
            )
        return super()._proc_member(tarfile_)


class _Budget:
    """A read-only stream that refuses to deliver more than `limit` bytes in all, checked
    before each read (tarfile reads a pax or long-name header whole)."""

    def __init__(self, raw, limit: int, archive: str):
        self.raw, self.left, self.archive = raw, limit, archive

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            data = self.raw.read(self.left + 1)
        else:
            data = self.raw.read(size)
        self.left -= len(data)
        if self.left < 0:
            raise PipelineError(
                f"{self.archive}: unpacks to more than {MAX_TOTAL_BYTES:,} bytes with its "
                "headers (the limit)"
            )
        return data


def extract(archive: Path, target: Path) -> None:
    """Extract a tar (any compression) or zip archive into `target`, refusing unsafe members
    and archives over the limits (MAX_MEMBERS, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES)."""
    limits = Limits(archive.name)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target, limits)
        else:
            _extract_tar(archive, target, limits)
    except (tarfile.ReadError, zipfile.BadZipFile):
        raise PipelineError(f"{archive.name}: not a tar or zip archive") from None
    except getattr(tarfile, "FilterError", ()) as exc:  # Python 3.11.4 and later
        raise PipelineError(f"unsafe archive member: {exc}") from None
    except (EOFError, tarfile.TarError, zipfile.LargeZipFile, lzma.LZMAError, OSError) as exc:
        raise PipelineError(f"{archive.name}: truncated or corrupt archive ({exc})") from None


def _extract_tar(archive: Path, target: Path, limits: Limits) -> None:
    with open(archive, "rb") as fh:
        magic = fh.read(6)
    opener = next((o for m, o in _COMPRESSED.items() if magic.startswith(m)), open)
    with opener(archive, "rb") as raw:
        budget = _Budget(raw, MAX_TOTAL_BYTES + _HEADER_SLACK, archive.name)
        # A stream (no seeking back), its headers checked before tarfile reads them.
        with tarfile.open(fileobj=budget, mode="r|", tarinfo=_CheckedTarInfo) as tf:

            def checked():
                for m in tf:
                    link = "sym" if m.issym() else "hard" if m.islnk() else None
                    check_member(m.name, link, m.linkname, m.isdev() or m.isfifo())
                    limits.add(m.name, m.size if m.isreg() else 0)
                    yield m

            bar = tqdm(checked(), desc="extract", unit="file", disable=None)  # no bar off a tty
            if hasattr(tarfile, "data_filter"):
                # The 'data' filter enforces the same rules again inside tarfile itself.
                tf.extractall(target, members=bar, filter="data")
            else:  # Python before 3.11.4 (Debian 12's 3.11.2): its owner and mode rules here
                tf.extractall(target, members=(_as_data(m) for m in bar))


def _as_data(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the 'data' filter does besides the checks above, for Pythons without it: the
    files belong to whoever extracts them (as root, tarfile would give them the archive's
    owners), without setuid, setgid or sticky bits or write access for others."""
    member.uid = member.gid = None
    member.uname = member.gname = None
    if member.isdir():
        member.mode = 0o755
    elif member.isreg() or member.islnk():
        member.mode = 0o644 | (0o111 if member.mode & 0o100 else 0)
    return member


def _extract_zip(archive: Path, target: Path, limits: Limits) -> None:
    """A zip's directory lists every member's size up front (its entry count is read from
    the end record before the directory itself); zipfile stops reading a member at its
    declared size (a CRC error if the data says otherwise), so checking the directory
    bounds what is written."""
    entries = _zip_entries(archive)
    if entries > MAX_MEMBERS:
        raise PipelineError(
            f"{archive.name}: {entries:,} members, more than {MAX_MEMBERS:,} (the limit; "
            "CIFAR-10 has 60,000 images)"
        )
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise PipelineError(f"unsafe archive member {info.filename!r}: symlink in zip")
            check_member(info.filename, None, None, False)
            limits.add(info.filename, info.file_size)
        zf.extractall(target)


def _zip_entries(archive: Path) -> int:
    """The entry count in a zip's end-of-central-directory record (the zip64 one's when the
    16-bit field is full); 0 when there is none (zipfile then refuses the file)."""
    with open(archive, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - (1 << 16) - 22))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return 0
    entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    locator = tail.rfind(b"PK\x06\x07", 0, at)
    if entries == 0xFFFF and locator >= 0:
        with open(archive, "rb") as fh:
            fh.seek(struct.unpack("<Q", tail[locator + 8 : locator + 16])[0])
            record = fh.read(56)
        if record[:4] == b"PK\x06\x06" and len(record) == 56:
            entries = struct.unpack("<Q", record[32:40])[0]
    return entries
