"""A trained model's identity: a .keras file whose bytes depend on the weights alone, and the
SHA-256 of those weights.

Keras writes the save time into a .keras archive (metadata.json's `date_saved` and the zip
entries' timestamps) and the memory addresses of shared objects into config.json
(`shared_object_id`), so two saves of the same weights differ byte for byte and DVC would see
two different `models/model.keras`. `save_model` rewrites the archive without them: the same
weights give the same bytes, and so the md5 that dvc.lock records.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import replacing

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can carry


def weights_sha256(model) -> str:
    """sha256 over every weight of `model` in order: dtype, shape and bytes."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def file_weights_sha256(path: Path) -> str:
    """weights_sha256 of the model saved at `path`, or a one-line error."""
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, KeyError, ... for a bad file
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{path}: cannot load the model ({reason})") from None
    return weights_sha256(model)


def save_model(model, path: Path) -> None:
    """Save `model` to `path` atomically (a reader never sees half a file), as an archive
    whose bytes depend only on the model's configuration and weights."""
    with replacing(path) as tmp:
        model.save(tmp)
        _strip_times(tmp)


def _strip_times(path: Path) -> None:
    """Rewrite the .keras zip at `path` with fixed entry times, no `date_saved` and shared
    objects numbered in order of appearance."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            target.writestr(fixed, data)


def _renumber(node, ids: dict):
    """`node` (a parsed config.json) with each `shared_object_id` (a Python id(), which differs
    from process to process) replaced by 0, 1, 2, ... in order of first appearance."""
    if isinstance(node, list):
        return [_renumber(item, ids) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _renumber(v, ids) for k, v in node.items()}
    if "shared_object_id" in out:
        out["shared_object_id"] = ids.setdefault(out["shared_object_id"], len(ids))
    return out
