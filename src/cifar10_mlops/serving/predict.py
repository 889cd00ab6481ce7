"""`cifar10-mlops predict`: classify image files with a model from the MLflow registry.

Reads image files (png, jpg, bmp, gif, webp, tiff) or folders of them, any size: each image is
cropped to its central square and resized to 32x32, as CIFAR-10's images are. Links are
followed, each folder read once (a link back to a folder already read is skipped with a
warning, as are broken links and what is not a regular file); an image that cannot be read
stops the command, or is skipped with a warning under --skip-bad. The model is any
MLflow model URI; by default `models:/<register.model_name>@champion` (params.yaml) from the
store that MLFLOW_TRACKING_URI names, else the embedded mlruns/mlflow.db. An alias or `latest` is
resolved to its version once, and that version is loaded, so the output names what answered
(`models:/cifar10-cnn@champion -> cifar10-cnn v3`) even if the alias moves meanwhile. Its
artifacts load only when their digest is the one recorded when they were logged.
Prints the model and the class and probability of each image as a table, or everything as JSON;
what TensorFlow, Keras and MLflow print while the model loads is hidden unless --verbose.

`cifar10-mlops request` writes the same images as the JSON body that `mlflow models serve`
expects ({"inputs": [n x 32 x 32 x 3 integers]}), for curl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cifar10_mlops.core import artifacts, quiet, tracking
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.serving.images import collect, load_image, load_images

__all__ = ["collect", "load_image", "load_images", "main", "request_main"]


@dataclass(frozen=True)
class Source:
    """What answered: the URI asked for and the one loaded, which names a registered version
    (models:/<name>/<version>) where there is one; else the URI itself (a run, a folder)."""

    asked: str
    uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None
    model_id: str | None = None  # the logged model whose artifacts load, checked first

    def describe(self) -> str:
        """`models:/cifar10-cnn@champion -> cifar10-cnn v3 (run <id>)`; a run or a folder says
        that it is no registered version."""
        notes = [f"run {self.run_id}"] if self.run_id else []
        if self.version is None:
            return f"{self.asked} ({', '.join([*notes, 'not a registered version'])})"
        return f"{self.asked} -> {self.name} v{self.version}" + (f" ({notes[0]})" if notes else "")


def resolve(uri: str, client) -> Source:
    """The registered version that a models:/ URI names now (tracking.model_version), looked
    up once, and its logged model; a logged model's models:/m-...; the run of a runs:/ URI and
    the model it logged last under that name; for anything else (a folder), the URI alone."""
    if uri.startswith("runs:/"):
        run_id, _, name = uri.removeprefix("runs:/").partition("/")
        return Source(uri, uri, run_id=run_id, model_id=_run_model(client, run_id, name))
    if uri.startswith("models:/m-"):
        model_id = uri.removeprefix("models:/").split("/")[0]
        return Source(uri, uri, model_id=model_id)
    version = tracking.model_version(uri, client)
    if version is None:  # a model folder, another store's URI
        return Source(uri, uri)
    loads = f"models:/{version.name}/{version.version}"
    model_id = artifacts.model_id_of(version)
    if model_id is None:
        raise PipelineError(f"{loads} was not registered from a logged model: cannot check it")
    return Source(uri, loads, version.name, int(version.version), version.run_id, model_id)


def _run_model(client, run_id: str, name: str) -> str:
    """The id of the model named `name` that run `run_id` logged last."""
    import mlflow

    if not (re.fullmatch(r"[0-9a-f]{1,64}", run_id) and re.fullmatch(r"[\w.-]+", name)):
        raise PipelineError(f"runs:/{run_id}/{name}: expected runs:/<run id>/<model name>")
    found = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        experiment_ids=[client.get_run(run_id).info.experiment_id],
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1, output_format="list",
    )  # fmt: skip
    if not found:
        raise PipelineError(f"runs:/{run_id}/{name}: the run logged no model named {name!r}")
    return found[0].model_id


def load_model(uri: str):
    """mlflow.pyfunc.load_model, with a one-line error for a missing model or alias, and the
    artifacts of a registered or logged model checked first (core/artifacts.py)."""
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
        client = mlflow.MlflowClient()
        source = resolve(uri, client)
        if source.model_id is None:  # a folder of this machine's: its owner's files
            return mlflow.pyfunc.load_model(source.uri), source
        return artifacts.load_model(client, source.model_id, source.describe()), source
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
