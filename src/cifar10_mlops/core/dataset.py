"""Reading CIFAR-10 in its two layouts, once extracted (archive.py), shared by `download`
(validate, count) and `prepare` (decode).

- python: the official `cifar-10-batches-py/` pickles (data_batch_1..5, test_batch,
  batches.meta), read with an unpickler that admits numpy arrays and plain types only;
- images: `<root>/{train,test}/<class>/*.{png,jpg,jpeg}`, one folder per class.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar10_mlops.core.errors import PipelineError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
PYTHON_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


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
        data, labels = batch[b"data"], batch[b"labels"]
        # Checked before anything is copied: a pickle refers to one object as often as it
        # likes, so a 1 MB file can hold a list of 20,000 references to one 1 MB array,
        # which np.asarray would copy into 20 GB.
        if not isinstance(data, np.ndarray):
            raise PipelineError(f"{name}: data is a {type(data).__name__}, not an array")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise PipelineError(f"{name}: expected uint8 rows of 3072 values, got {data.shape}")
        if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
            raise PipelineError(f"{name}: {len(data)} images but labels are not as many")
        if isinstance(labels, list) and not all(type(y) is int for y in labels):
            raise PipelineError(f"{name}: labels are not all integers")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise PipelineError(f"{name}: labels are not a list of integers")
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
        names = meta[b"label_names"]  # checked before decoding: references repeat for free
        if not isinstance(names, list) or len(names) > 100:
            raise PipelineError("batches.meta: label_names is not a short list")
        if not all(isinstance(n, (bytes, str)) and len(n) <= 100 for n in names):
            raise PipelineError("batches.meta: label_names are not short names")
        return [n.decode() if isinstance(n, bytes) else n for n in names]
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
        with Image.open(path, formats=("PNG", "JPEG")) as img:  # never EPS named .png
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
