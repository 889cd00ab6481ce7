"""Stage `download`: fetch the CIFAR-10 archive, verify it, check that it extracts safely.

Reads  params.yaml `download` (source, checksum, retries, timeout, deadline); the variable
       CIFAR10_SOURCE (a path or URL) overrides `source`, with CIFAR10_CHECKSUM for its digest,
       except a published dataset's (`publish-data`: a source under data/published/, which
       DVC tracks): an offline machine's copy of the official archive never replaces it.
Writes data/raw/: the archive itself and manifest.json (source, file name, format, checksums,
       image counts per split and class). The same archive gives the same manifest on every
       machine: the source is recorded by file name or credential-free URL, never its path.
       Nothing is written there unless every check passes.
       The archive stays packed: DVC then tracks one file instead of 60,000, which keeps a
       no-op `dvc repro` fast; `prepare` extracts it again, with the same checks.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cifar10_mlops.core import dataset
from cifar10_mlops.core.archive import extract
from cifar10_mlops.core.urls import OPENER, archive_name, content_length, permanent
from cifar10_mlops.core.validation import checked, valid_checksum
from cifar10_mlops.core.settings import load_params
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import file_digests, scratch, write_json
from cifar10_mlops.core.stage import run_stage, stage_parser

SOURCE_ENV = "CIFAR10_SOURCE"
CHECKSUM_ENV = "CIFAR10_CHECKSUM"
# Where `cifar10-mlops publish-data` keeps the published archive (cifar10_mlops.ops.publish).
PUBLISHED = PurePosixPath("data/published")
_CHUNK = 1 << 20
# The archive itself: the official one is 163 MB, an image-folder copy less. A source over
# this is refused before it is copied, or as soon as a download passes it (no disk fills).
MAX_ARCHIVE_BYTES = 1 << 30  # 1 GiB


def describe_source(source: str) -> str:
    """What the manifest records of `source`: a local file's name (not its path, which differs
    between machines and would give the same archive two DVC hashes), a URL without
    credentials, query or fragment (which could hold a token)."""
    if "://" not in source or source.startswith("file://"):
        return Path(source.removeprefix("file://")).name
    parts = urllib.parse.urlsplit(source)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_published(source: str) -> bool:
    """Whether `source` is the archive `publish-data` placed under data/published/."""
    return "://" not in source and PurePosixPath(source).parent == PUBLISHED


def resolve_source(source: str, checksum: str | None) -> tuple[str, str | None]:
    """The source to use and its known checksum, honouring the environment override (which
    a published dataset's source does not take)."""
    override = os.environ.get(SOURCE_ENV, "").strip()
    if override and is_published(source):
        print(f"{SOURCE_ENV} ignored: params.yaml names the published dataset {source}")
    elif override:
        checksum = os.environ.get(CHECKSUM_ENV, "").strip() or None
        if checksum:
            checked(CHECKSUM_ENV, valid_checksum, checksum)
        return override, checksum
    return source, checksum


class DeadlineExceeded(PipelineError):
    """The download as a whole took longer than `download.deadline`."""


def fetch(source: str, dest_dir: Path, *, retries: int, timeout: float, deadline: float) -> Path:
    """Return a local path for `source`: a local file as is, a URL downloaded into dest_dir
    within `deadline` seconds in all (each read waits at most `timeout`)."""
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise PipelineError(f"source not found: {path}")
        check_size(source, path.stat().st_size)
        return path
    shown = describe_source(source)
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme not in ("http", "https"):
        raise PipelineError(f"cannot download {shown}: {scheme}:// is not http(s) or a file")
    dest = dest_dir / archive_name(source)
    end = time.monotonic() + deadline
    for attempt in range(1, retries + 1):
        try:
            _download(source, dest, min(timeout, max(end - time.monotonic(), 0.1)), end)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise PipelineError(
                    f"cannot download {shown}: HTTP {exc.code} {exc.reason}"
                ) from None
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = str(getattr(exc, "reason", exc))
            if permanent(exc):  # retrying cannot help: say so now
                raise PipelineError(f"cannot download {shown}: {reason}") from None
            if time.monotonic() >= end:
                raise _deadline(shown, deadline, reason) from None
        if attempt < retries:
            delay = min(2 ** (attempt - 1), 30)
            if time.monotonic() + delay >= end:
                raise _deadline(shown, deadline, reason)
            print(
                f"download failed ({reason}); retry {attempt}/{retries - 1} in {delay}s", flush=True
            )
            time.sleep(delay)
    raise PipelineError(f"cannot download {shown}: {reason} (after {retries} attempts)")


def check_size(source: str, size: int) -> None:
    if size > MAX_ARCHIVE_BYTES:
        raise PipelineError(
            f"{source}: {size:,} bytes or more, over the limit of {MAX_ARCHIVE_BYTES:,} for an "
            "archive of CIFAR-10"
        )


def _deadline(source: str, deadline: float, reason: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"cannot download {source}: not finished within download.deadline = {deadline:g} s "
        f"({reason})"
    )


def _download(url: str, dest: Path, timeout: float, end: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "cifar10-mlops"})
    with OPENER.open(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = content_length(describe_source(url), response)
        check_size(describe_source(url), total or 0)
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            # read1: what has arrived, at most one wait of `timeout`; read() would wait for a
            # whole chunk, so a server dripping a byte at a time could hold it forever.
            while chunk := response.read1(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
                check_size(url, out.tell())
                if time.monotonic() > end:
                    raise TimeoutError(f"{out.tell()} bytes received when the deadline passed")
        if total is not None and out.tell() != total:
            raise ConnectionError(f"connection closed after {out.tell()} of {total} bytes")


def verify(path: Path, expected: str | None) -> dict[str, str]:
    """Compute the archive's digests and compare with `expected` ("algo:hex") when given."""
    found = file_digests(path, "md5", "sha256")
    if expected:
        algo, _, want = expected.partition(":")
        if found[algo] != want.lower():
            raise PipelineError(
                f"checksum mismatch for {path.name}: {algo} is {found[algo]}, expected {want}"
            )
    return found


def count_images(layout: dataset.Layout) -> dict[str, dict[str, int]]:
    """Images per split and class; validates the layout (batches, class folders)."""
    counts = {}
    for split in dataset.SPLITS:
        if layout.kind == "python":
            _, labels = dataset.load_python_split(layout, split)
            counts[split] = {c: int((labels == i).sum()) for i, c in enumerate(dataset.CLASSES)}
        else:
            files = dataset.list_image_split(layout, split)
            counts[split] = {c: len(files[c]) for c in dataset.CLASSES}
    if layout.kind == "python" and dataset.python_class_names(layout) != list(dataset.CLASSES):
        raise PipelineError(
            f"batches.meta lists unexpected classes: {dataset.python_class_names(layout)}"
        )
    return counts


def download(
    source: str,
    checksum: str | None,
    out_dir: Path,
    *,
    retries: int,
    timeout: float,
    deadline: float,
) -> dict:
    """Fetch and verify `source`, check its extraction and layout, and keep the archive and
    its manifest in `out_dir`, replacing it only on success."""
    with scratch(out_dir.parent, f".{out_dir.name}") as tmp:
        archive = fetch(source, tmp, retries=retries, timeout=timeout, deadline=deadline)
        found = verify(archive, checksum)
        extracted = tmp / "extracted"
        extract(archive, extracted)
        layout = dataset.find_layout(extracted)
        manifest = {
            "source": describe_source(source),
            "archive": archive.name,
            "format": layout.kind,
            "root": layout.root.relative_to(extracted).as_posix(),
            "md5": found["md5"],
            "sha256": found["sha256"],
            "checksum_verified": checksum,
            "counts": count_images(layout),
        }
        staged = tmp / "staged"
        staged.mkdir()
        if archive.parent == tmp:  # downloaded: move it; a local source is copied
            archive.rename(staged / archive.name)
        else:
            shutil.copyfile(archive, staged / archive.name)
        write_json(staged / "manifest.json", manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, out="folder to create (data/raw)")
    args = parser.parse_args(argv)
    cfg = load_params(args.params).download
    source, checksum = resolve_source(cfg.source, cfg.checksum)
    print(f"source: {source}" + ("" if checksum else " (no checksum known: recording sha256 only)"))
    manifest = download(
        source, checksum, args.out, retries=cfg.retries, timeout=cfg.timeout,
        deadline=cfg.deadline,
    )  # fmt: skip
    totals = {split: sum(c.values()) for split, c in manifest["counts"].items()}
    print(
        f"{manifest['format']} archive, sha256 {manifest['sha256'][:12]}…, "
        f"images {totals} -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
