"""`cifar10-mlops predict`: classify image files with a model from the MLflow registry.

Reads image files (png, jpg, bmp, gif, webp, tiff) or folders of them, any size: each image is
cropped to its central square and resized to 32x32, as CIFAR-10's images are. The model is any
MLflow model URI; by default `models:/<register.model_name>@champion` (params.yaml) from the
store that MLFLOW_TRACKING_URI names, else the embedded mlruns/mlflow.db.
Prints the class and probability of each image as a table, or everything as JSON.

`cifar10-mlops request` writes the same images as the JSON body that `mlflow models serve`
expects ({"inputs": [n x 32 x 32 x 3 integers]}), for curl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar10_mlops import tracking
from cifar10_mlops.config import load_params
from cifar10_mlops.dataset import CLASSES, IMAGE_SHAPE
from cifar10_mlops.errors import PipelineError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
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
    """The files named, and the image files (by suffix) under the folders named, sorted."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
            if not found:
                raise PipelineError(f"{path}: no image files ({', '.join(sorted(SUFFIXES))})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PipelineError(f"{path}: no such file or folder")
    return files


def load_image(path: Path, convert: bool = False) -> np.ndarray:
    """One image as uint8 (32, 32, 3): central square crop, then a bicubic resize."""
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty file")
    try:
        with Image.open(path) as image:
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
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise PipelineError(f"{path}: not an image that can be read ({exc})") from None
    except OSError as exc:  # truncated or corrupt data
        raise PipelineError(f"{path}: cannot decode the image ({exc})") from None


def load_model(uri: str):
    """mlflow.pyfunc.load_model, with a one-line error for a missing model or alias."""
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
        return mlflow.pyfunc.load_model(uri)
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
    """(n, 10) class probabilities."""
    return np.asarray(model.predict(images), dtype=np.float64)


def format_table(files: list[Path], probs: np.ndarray) -> str:
    width = max(len("file"), *(len(str(f)) for f in files))
    lines = [f"{'file':<{width}}  {'class':<10}  {'prob':>5}  runner-up"]
    for path, p in zip(files, probs):
        first, second = np.argsort(p)[::-1][:2]
        lines.append(
            f"{str(path):<{width}}  {CLASSES[first]:<10}  {p[first]:5.3f}  "
            f"{CLASSES[second]} {p[second]:.3f}"
        )
    return "\n".join(lines)


def as_json(files: list[Path], probs: np.ndarray, model_uri: str) -> str:
    rows = [
        {
            "file": str(path),
            "class": CLASSES[int(p.argmax())],
            "probability": round(float(p.max()), 6),
            "probabilities": {c: round(float(v), 6) for c, v in zip(CLASSES, p)},
        }
        for path, p in zip(files, probs)
    ]
    return json.dumps({"model": model_uri, "predictions": rows}, indent=2)


def _images_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument(
        "--convert", action="store_true", help="convert grayscale, RGBA, ... images to RGB"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _images_parser("cifar10-mlops predict", "Classify images with a registered model.")
    parser.add_argument(
        "--model", help="MLflow model URI (default: models:/<register.model_name>@champion)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    files = collect(args.images)
    images = np.stack([load_image(f, args.convert) for f in files])  # all checked first
    uri = args.model or tracking.champion_uri(load_params(args.params).register.model_name)
    probs = classify(load_model(uri), images)
    print(as_json(files, probs, uri) if args.format == "json" else format_table(files, probs))


def request_main(argv: list[str] | None = None) -> None:
    parser = _images_parser(
        "cifar10-mlops request", "Write images as a JSON request for `mlflow models serve`."
    )
    args = parser.parse_args(argv)
    images = np.stack([load_image(f, args.convert) for f in collect(args.images)])
    json.dump({"inputs": images.tolist()}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
