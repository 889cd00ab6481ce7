"""What a model saw when it was evaluated, kept to compare production with (monitoring/drift.py):
a stratified sample of the validation split, each image's penultimate-layer embedding, its
predicted class, its top-1 probability and its mean pixel value (brightness).

The validation split, not the training split: the model was fit to its training images, so it
is surer of them than of any new image, and a clean window of test images differs from a
training reference (measured: the confidence test flagged 20 of 20 clean 500-image windows
against a training reference, 0 of 20 against a validation one; docs/monitoring.md). The
validation images were held out of training, as production images are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import replacing
from cifar10_mlops.core.splits import per_class_subset

FILE = "drift_reference.npz"  # its name beside the model's other evaluation artifacts
KEYS = ("embeddings", "predicted", "confidence", "brightness")


def embedder(model):
    """The Keras model mapping images to the input of `model`'s last Dense layer (the
    classifier): of the inner network when `model` wraps it for test-time augmentation."""
    import keras

    inner = next((layer for layer in model.layers if isinstance(layer, keras.Model)), model)
    dense = [layer for layer in inner.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise PipelineError(f"model {model.name!r} has no Dense layer to take embeddings before")
    return keras.Model(inner.inputs, dense[-1].input, name=f"{inner.name}_embeddings")


def describe(model, images: np.ndarray, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Each image's embedding (float32), predicted class, top-1 probability and brightness,
    and its class probabilities."""
    embeddings = embedder(model).predict(images, batch_size=batch_size, verbose=0)
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return {
        "embeddings": np.asarray(embeddings, np.float32).reshape(len(images), -1),
        "predicted": probabilities.argmax(axis=1).astype(np.int64),
        "confidence": probabilities.max(axis=1).astype(np.float32),
        "brightness": images.reshape(len(images), -1).mean(axis=1, dtype=np.float32),
        "probabilities": np.asarray(probabilities, np.float32),
    }


def build(model, x: np.ndarray, y: np.ndarray, images: int, seed: int, batch_size: int) -> dict:
    """The reference of `model` from `images` images of (x, y), as many of each class."""
    per_class = max(1, images // len(np.unique(y)))
    sample, _ = per_class_subset(x, y, per_class, np.random.default_rng(seed))
    described = describe(model, sample, batch_size)
    return {key: described[key] for key in KEYS}


def save(path: Path, reference: dict) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{key: reference[key] for key in KEYS})


def load(path: Path) -> dict[str, np.ndarray]:
    """A reference saved by `save`, checked: a one-line PipelineError for anything else."""
    try:
        with np.load(path, allow_pickle=False) as data:
            reference = {key: data[key] for key in KEYS}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise PipelineError(f"{path}: not a drift reference ({reason})") from None
    rows = {len(reference[key]) for key in KEYS}
    e = reference["embeddings"]
    if len(rows) != 1 or e.ndim != 2 or len(e) < 2 or not np.isfinite(e).all():
        raise PipelineError(
            f"{path}: not a drift reference (embeddings {e.shape}, "
            + ", ".join(f"{len(reference[key])} {key}" for key in KEYS[1:])
            + ")"
        )
    return reference
