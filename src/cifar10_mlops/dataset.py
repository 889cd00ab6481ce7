"""Extracting and reading CIFAR-10 in its two archive layouts, shared by `download`
(validate, count) and `prepare` (decode).

- python: the official `cifar-10-batches-py/` pickles (data_batch_1..5, test_batch,
  batches.meta), read with an unpickler that admits numpy arrays and plain types only;
- images: `<root>/{train,test}/<class>/*.{png,jpg,jpeg}`, one folder per class.
"""

from __future__ import annotations

import codecs
import pickle
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cifar10_mlops.errors import PipelineError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
PYTHON_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# What an archive may unpack to: CIFAR-10 as python batches is 8 files of at most 31 MB
# (178 MB in all); as image files, 60,000 images of a few KB plus their folders. Room for any
# reasonable copy (PNG, BMP), none for a bomb.
MAX_MEMBERS = 70_000
MAX_MEMBER_BYTES = 64 << 20  # 64 MiB
MAX_TOTAL_BYTES = 1 << 30  # 1 GiB

# The only globals a CIFAR-10 pickle may refer to: numpy's array reconstruction (under its
# numpy 1 and numpy 2 module names) and the codec py3 uses for bytes in protocol-2 pickles.
# Anything else (os.system, eval, arbitrary classes) is refused before it is looked up.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


def _check_member(name: str, link: str | None, link_target: str | None, is_special: bool) -> None:
    """Refuse absolute or parent paths, devices, and links resolving outside the archive.

    `link` is "sym" (target relative to the member's folder) or "hard" (relative to the
    archive root), None for a regular member.
    """
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise PipelineError(f"unsafe archive member {name!r}: path leaves the target folder")
    if is_special:
        raise PipelineError(f"unsafe archive member {name!r}: device or fifo")
    if link:
        base = PurePosixPath(name).parent if link == "sym" else PurePosixPath()
        target = posixpath.normpath(base / (link_target or ""))
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


def extract(archive: Path, target: Path) -> None:
    """Extract a tar (any compression) or zip archive into `target`, refusing unsafe members
    and archives over the limits (MAX_MEMBERS, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES)."""
    limits = Limits(archive.name)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target, limits)
            return
        with tarfile.open(archive) as tf:
            # Members are read lazily, one header at a time, and each is checked before it is
            # extracted: an archive of a million members or a 10 GiB one stops at its limit.
            def checked():
                for m in tf:
                    link = "sym" if m.issym() else "hard" if m.islnk() else None
                    _check_member(m.name, link, m.linkname, m.isdev() or m.isfifo())
                    limits.add(m.name, m.size if m.isreg() else 0)
                    yield m

            # The 'data' filter enforces the same rules again inside tarfile itself.
            bar = tqdm(checked(), desc="extract", unit="file", disable=None)  # no bar off a tty
            tf.extractall(target, members=bar, filter="data")
    except (tarfile.ReadError, zipfile.BadZipFile):
        raise PipelineError(f"{archive.name}: not a tar or zip archive") from None
    except (EOFError, tarfile.TarError, zipfile.LargeZipFile, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise PipelineError(f"unsafe archive member: {exc}") from None
        raise PipelineError(f"{archive.name}: truncated or corrupt archive ({exc})") from None


def _extract_zip(archive: Path, target: Path, limits: Limits) -> None:
    """A zip's directory lists every member's size up front; zipfile stops reading a member
    at its declared size (a CRC error if the data says otherwise), so checking the
    directory bounds what is written."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise PipelineError(f"unsafe archive member {info.filename!r}: symlink in zip")
            _check_member(info.filename, None, None, False)
            limits.add(info.filename, info.file_size)
        zf.extractall(target)


@dataclass(frozen=True)
class Layout:
    kind: str  # "python" or "images"
    root: Path  # the folder holding the batches, or the one holding train/ and test/


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 batch needs."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def safe_unpickle(path: Path) -> object:
    """Load a pickle with RestrictedUnpickler; the data needs the 'bytes' encoding (py2)."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise PipelineError(f"{path.name}: unsafe or invalid pickle: {exc}") from None
    except (EOFError, ValueError, TypeError) as exc:
        raise PipelineError(f"{path.name}: corrupt pickle ({exc})") from None


def find_layout(root: Path) -> Layout:
    """Locate the dataset inside an extracted archive, whichever of the two layouts it has."""
    for batch in sorted(root.rglob("data_batch_1")):
        return Layout("python", batch.parent)
    for train in sorted(root.rglob("train")):
        if train.is_dir() and (train.parent / "test").is_dir():
            return Layout("images", train.parent)
    raise PipelineError(
        "archive has neither CIFAR-10 layout: no cifar-10-batches-py/data_batch_1 and no "
        "<root>/train + <root>/test class folders"
    )


def load_python_split(layout: Layout, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split of the official pickles into uint8 NHWC images and labels."""
    xs, ys = [], []
    for name in PYTHON_BATCHES[split]:
        path = layout.root / name
        if not path.is_file():
            raise PipelineError(f"missing batch file {name} in {layout.root.name}/")
        batch = safe_unpickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise PipelineError(f"{name}: not a CIFAR-10 batch (no data/labels)")
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise PipelineError(f"{name}: expected uint8 rows of 3072 values, got {data.shape}")
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if len(labels) != len(data):
            raise PipelineError(f"{name}: {len(data)} images but {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    labels = np.concatenate(ys)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise PipelineError(f"{split} labels out of range 0..{len(CLASSES) - 1}")
    return np.ascontiguousarray(np.concatenate(xs)), labels.astype(np.uint8)


def python_class_names(layout: Layout) -> list[str]:
    """Class names from batches.meta, or the standard ten when the file is absent."""
    path = layout.root / "batches.meta"
    meta = safe_unpickle(path) if path.is_file() else None
    if isinstance(meta, dict) and b"label_names" in meta:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return list(CLASSES)


def list_image_split(layout: Layout, split: str) -> dict[str, list[Path]]:
    """Image files of one split by class; every one of the ten class folders must exist."""
    split_dir = layout.root / split
    missing = [c for c in CLASSES if not (split_dir / c).is_dir()]
    if missing:
        raise PipelineError(f"missing class folder(s) in {split}/: {', '.join(missing)}")
    files = {}
    for cls in CLASSES:
        paths = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise PipelineError(f"class folder {split}/{cls}/ has no .png or .jpg images")
        files[cls] = paths
    return files


def decode_image(path: Path) -> np.ndarray:
    """Decode one 32x32 RGB image file, or fail naming the file."""
    try:
        with Image.open(path) as img:
            # The header's size and mode, checked before the pixels are decoded: a small file
            # may declare a huge image.
            if img.mode != "RGB" or img.size != IMAGE_SHAPE[1::-1]:
                raise PipelineError(
                    f"wrong-sized image {path}: expected 32x32 RGB, got {img.size} {img.mode}"
                )
            img.load()
            array = np.asarray(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise PipelineError(f"corrupt image {path}: {exc}") from None
    if array.shape != IMAGE_SHAPE:
        raise PipelineError(f"wrong-sized image {path}: expected 32x32x3, got {array.shape}")
    return array


def load_image_split(layout: Layout, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split of an image-folder dataset into uint8 NHWC images and labels."""
    files = list_image_split(layout, split)
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        images.extend(decode_image(p) for p in files[cls])
        labels.extend([label] * len(files[cls]))
    return np.stack(images), np.asarray(labels, dtype=np.uint8)


def load_split(layout: Layout, split: str) -> tuple[np.ndarray, np.ndarray]:
    loader = load_python_split if layout.kind == "python" else load_image_split
    return loader(layout, split)
