"""`cifar10-mlops predict`: classify image files with a model from the MLflow registry.

Reads image files (png, jpg, bmp, gif, webp, tiff) or folders of them, any size: each image is
cropped to its central square and resized to 32x32, as CIFAR-10's images are. Links are
followed, each folder read once (a link back to a folder already read is skipped with a
warning, as are broken links and what is not a regular file); an image that cannot be read
stops the command, or is skipped with a warning under --skip-bad. The model is any
MLflow model URI; by default `models:/<register.model_name>@champion` (params.yaml) from the
store that MLFLOW_TRACKING_URI names, else the embedded mlruns/mlflow.db. An alias or `latest` is
resolved to its version once, and that version is loaded, so the output names what answered
(`models:/cifar10-cnn@champion -> cifar10-cnn v3`) even if the alias moves meanwhile.
Prints the model and the class and probability of each image as a table, or everything as JSON;
what TensorFlow, Keras and MLflow print while the model loads is hidden unless --verbose.

`cifar10-mlops request` writes the same images as the JSON body that `mlflow models serve`
expects ({"inputs": [n x 32 x 32 x 3 integers]}), for curl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar10_mlops.core import quiet, tracking
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.core.dataset import CLASSES, IMAGE_SHAPE
from cifar10_mlops.core.errors import PipelineError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# The decoders Pillow may use, whatever a file's name says: PostScript or EPS content named
# .png would otherwise go to Ghostscript, and other plugins parse other formats.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (a 8000x8000 photo)
MODES = {
    "1": "black-and-white (1 channel)",
    "L": "grayscale (1 channel)",
    "LA": "grayscale with alpha (2 channels)",
    "P": "palette",
    "RGBA": "RGBA (4 channels)",
    "CMYK": "CMYK (4 channels)",
    "I;16": "16-bit grayscale",
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
            if image.mode != "RGB":
                if not convert:
                    kind = MODES.get(image.mode, f"mode {image.mode}")
                    raise PipelineError(
                        f"{path}: {kind} image, the model takes RGB (3 channels); "
                        "pass --convert to convert it"
                    )
                image = image.convert("RGB")
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


@dataclass(frozen=True)
class Source:
    """What answered: the URI asked for and the one loaded, which names a registered version
    (models:/<name>/<version>) where there is one; else the URI itself (a run, a folder)."""

    asked: str
    uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None

    def describe(self) -> str:
        """`models:/cifar10-cnn@champion -> cifar10-cnn v3 (run <id>)`; a run or a folder says
        that it is no registered version."""
        notes = [f"run {self.run_id}"] if self.run_id else []
        if self.version is None:
            return f"{self.asked} ({', '.join([*notes, 'not a registered version'])})"
        return f"{self.asked} -> {self.name} v{self.version}" + (f" ({notes[0]})" if notes else "")


def resolve(uri: str, client) -> Source:
    """The registered version that a models:/ URI names now (tracking.model_version), looked
    up once; the run of a runs:/ URI; for anything else, the URI alone."""
    if uri.startswith("runs:/"):
        return Source(uri, uri, run_id=uri.removeprefix("runs:/").split("/", 1)[0])
    version = tracking.model_version(uri, client)
    if version is None:  # a model folder, another store's URI, a logged model's models:/m-...
        return Source(uri, uri)
    loads = f"models:/{version.name}/{version.version}"
    return Source(uri, loads, version.name, int(version.version), version.run_id)


def load_model(uri: str):
    """mlflow.pyfunc.load_model, with a one-line error for a missing model or alias."""
    return load_resolved(uri)[0]


def load_resolved(uri: str) -> tuple[object, Source]:
    """The model `uri` names and what it resolved to; the version an alias names is what
    loads, so that an alias moved meanwhile cannot make the output lie."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = tracking.tracking_uri()
    db = tracking.sqlite_file(store)
    if db is not None and not db.is_file() and uri.startswith(("models:/", "runs:/")):
        raise PipelineError(
            f"no MLflow store at {db}: run the pipeline first (make repro), "
            "or point MLFLOW_TRACKING_URI at the store that holds the model"
        )
    tracking.connect(store)
    try:
        source = resolve(uri, mlflow.MlflowClient())
        return mlflow.pyfunc.load_model(source.uri), source
    except MlflowException as exc:
        message = exc.message.splitlines()[0] if exc.message else str(exc)
        if uri.startswith("models:/") and "@" in uri and "not found" in message.lower():
            name, alias = uri.removeprefix("models:/").split("@", 1)
            raise PipelineError(
                f"no {alias} yet: model {name!r} has no version with the alias {alias!r} in "
                f"{store}; run the pipeline (make repro) to register one"
            ) from None
        raise PipelineError(f"cannot load {uri} from {store}: {message}") from None


def classify(model, images: np.ndarray) -> np.ndarray:
    """(n, 10) class probabilities, for any n: the model takes at most MAX_IMAGES a call, so
    they go in batches of that many."""
    from cifar10_mlops.serving.pyfunc import MAX_IMAGES  # imports MLflow, loaded by now

    batches = [images[i : i + MAX_IMAGES] for i in range(0, len(images), MAX_IMAGES)]
    return np.concatenate([np.asarray(model.predict(b), dtype=np.float64) for b in batches])


def format_table(files: list[Path], probs: np.ndarray, source: Source) -> str:
    width = max(len("file"), *(len(str(f)) for f in files))
    lines = [
        f"model: {source.describe()}",
        f"{'file':<{width}}  {'class':<10}  {'prob':>5}  runner-up",
    ]
    for path, p in zip(files, probs):
        first, second = np.argsort(p)[::-1][:2]
        lines.append(
            f"{str(path):<{width}}  {CLASSES[first]:<10}  {p[first]:5.3f}  "
            f"{CLASSES[second]} {p[second]:.3f}"
        )
    return "\n".join(lines)


def as_json(files: list[Path], probs: np.ndarray, source: Source) -> str:
    rows = [
        {
            "file": str(path),
            "class": CLASSES[int(p.argmax())],
            "probability": round(float(p.max()), 6),
            "probabilities": {c: round(float(v), 6) for c, v in zip(CLASSES, p)},
        }
        for path, p in zip(files, probs)
    ]
    resolved = {key: value for key, value in asdict(source).items() if key != "asked"}
    return json.dumps({"model": source.asked, "resolved": resolved, "predictions": rows}, indent=2)


def _images_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument(
        "--convert", action="store_true", help="convert grayscale, RGBA, ... images to RGB"
    )
    parser.add_argument(
        "--skip-bad", action="store_true",
        help="skip files that cannot be read as images, with a warning (default: stop)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _images_parser("cifar10-mlops predict", "Classify images with a registered model.")
    parser.add_argument(
        "--model", help="MLflow model URI (default: models:/<register.model_name>@champion)"
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--verbose", action="store_true",
        help="show what TensorFlow, Keras and MLflow print while the model loads (hidden)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    files, images = load_images(collect(args.images), args.convert, args.skip_bad)
    uri = args.model or tracking.champion_uri(load_params(args.params).register.model_name)
    with contextlib.nullcontext() if args.verbose else quiet.quiet():
        model, source = load_resolved(uri)
        probs = classify(model, images)
    show = as_json if args.format == "json" else format_table
    print(show(files, probs, source))


def request_main(argv: list[str] | None = None) -> None:
    parser = _images_parser(
        "cifar10-mlops request", "Write images as a JSON request for `mlflow models serve`."
    )
    args = parser.parse_args(argv)
    _, images = load_images(collect(args.images), args.convert, args.skip_bad)
    json.dump({"inputs": images.tolist()}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
