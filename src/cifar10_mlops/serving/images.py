"""Image files as the model's input, for `cifar10-mlops predict` and `request`: files and
folders collected (links followed, each folder once; broken links, loops and what is not a
regular file skipped with a warning), each image checked by its header before it is decoded
(allowed formats only, at most MAX_PIXELS), turned upright by its EXIF orientation, then
cropped to its central square and resized to 32x32 RGB, as CIFAR-10's images are. Other modes
are refused by name, or with --convert converted (to_rgb): 16-bit grayscale scaled to 8 bits,
transparency composited on white; float images are refused."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar10_mlops.core.dataset import IMAGE_SHAPE
from cifar10_mlops.core.errors import PipelineError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# The decoders Pillow may use, whatever a file's name says: PostScript or EPS content named
# .png would otherwise go to Ghostscript, and other plugins parse other formats.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (a 8000x8000 photo)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": how Pillow opens some 16-bit PNGs
MODES = {
    "1": "black-and-white (1 channel)",
    "L": "grayscale (1 channel)",
    "LA": "grayscale with alpha (2 channels)",
    "P": "palette",
    "RGBA": "RGBA (4 channels)",
    "CMYK": "CMYK (4 channels)",
    "I;16": "16-bit grayscale",
    "I": "32-bit integer grayscale",
    "F": "32-bit float grayscale",
}


def collect(paths: list[Path]) -> list[Path]:
    """The files named, and the image files (by suffix) in and under the folders named,
    sorted; links followed, each folder read once."""
    files = []
    for path in paths:
        if path.is_dir():
            found = _walk(path)
            if not found:
                raise PipelineError(f"{path}: no image files ({', '.join(sorted(SUFFIXES))})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.is_symlink():
            raise PipelineError(f"{path}: broken link to {os.readlink(path)}")
        elif path.exists():
            raise PipelineError(f"{path}: not a regular file or folder")
        else:
            raise PipelineError(f"{path}: no such file or folder")
    return files


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _walk(root: Path) -> list[Path]:
    """Image files under `root`, following links to folders once each (a loop ends there)."""
    seen, found = set(), []

    def unreadable(exc: OSError) -> None:
        warn(f"{exc.filename}: skipped, cannot read the folder ({exc.strerror})")

    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            warn(f"{folder}: skipped, a link to a folder already read ({real})")
            dirs.clear()
            continue
        seen.add(real)
        for name in names:
            path = Path(folder, name)
            if path.suffix.lower() not in SUFFIXES:
                continue
            try:
                mode = path.stat().st_mode
            except OSError:
                warn(f"{path}: skipped, a broken link")
                continue
            if not stat.S_ISREG(mode):  # a fifo would block the read forever
                warn(f"{path}: skipped, not a regular file")
                continue
            found.append(path)
    return sorted(found)


def load_images(files: list[Path], convert: bool, skip_bad: bool) -> tuple[list[Path], np.ndarray]:
    """All images, checked before any model loads; with `skip_bad`, the unreadable ones are
    left out with a warning instead of stopping everything."""
    kept, images = [], []
    for path in files:
        try:
            images.append(load_image(path, convert))
        except PipelineError as exc:
            if not skip_bad:
                raise PipelineError(f"{exc} (--skip-bad skips such files)") from None
            warn(f"skipped {exc}")
            continue
        kept.append(path)
    if not images:
        raise PipelineError(f"none of the {len(files)} files is an image that can be read")
    return kept, np.stack(images)


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB from another mode: 16-bit grayscale scaled (65535 is white, not every value
    over 255), transparency composited on white (what it shows on a page), floats refused
    (their range is unknown)."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise PipelineError(f"{path}: {image.mode} values outside 0-65535, not an image")
        gray = np.round(values / 257).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "F":
        raise PipelineError(f"{path}: 32-bit float image, whose range is unknown; save it as 8-bit")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: Path, convert: bool = False) -> np.ndarray:
    """One image as uint8 (32, 32, 3): central square crop, then a bicubic resize."""
    if not path.is_file():  # a fifo or device would block the read
        raise PipelineError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty file")
    try:
        with Image.open(path, formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PipelineError(
                    f"{path}: {width}x{height} image is too large "
                    f"(limit {MAX_PIXELS // 1_000_000} megapixels)"
                )
            image = ImageOps.exif_transpose(image)  # a photo as it is shown, turned upright
            width, height = image.size
            if image.mode != "RGB":
                if not convert:
                    kind = MODES.get(image.mode, f"mode {image.mode}")
                    raise PipelineError(
                        f"{path}: {kind} image, the model takes RGB (3 channels); "
                        "pass --convert to convert it"
                    )
                image = to_rgb(image, path)
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.resize(
                IMAGE_SHAPE[:2], Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
            )
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        kinds = ", ".join(FORMATS[:-1]) + f" or {FORMATS[-1]}"
        raise PipelineError(f"{path}: not a {kinds} image that can be read") from None
    except Image.DecompressionBombError as exc:
        raise PipelineError(f"{path}: not an image that can be read ({exc})") from None
    except OSError as exc:  # truncated or corrupt data
        raise PipelineError(f"{path}: cannot decode the image ({exc})") from None
