"""The prepared-data format between `prepare` (writer) and `train` / `evaluate` (readers).

A folder holding {train,val,test}.npz, each with `x` (uint8, N x 32 x 32 x 3) and `y` (uint8
labels), and manifest.json (the source archive's checksums and the split sizes: lineage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import require_files, scratch, write_json

Split = tuple[np.ndarray, np.ndarray]


def per_class_subset(
    x: np.ndarray,
    y: np.ndarray,
    per_class: int | None,
    rng: np.random.Generator,
    *,
    classes: tuple[str, ...] | None = None,
) -> Split:
    """`per_class` random images of each class (all of them when None), in a shuffled order:
    `prepare`'s subsets and the search's. With `classes` (their names), a class with fewer
    images is an error; without, it keeps all it has."""
    if per_class is None:
        return x, y
    keep = []
    for label in range(len(classes)) if classes else np.unique(y):
        idx = np.flatnonzero(y == label)
        if classes and len(idx) < per_class:
            raise PipelineError(
                f"class {classes[label]} has {len(idx)} images, fewer than the {per_class} "
                "asked for"
            )
        keep.append(rng.choice(idx, min(per_class, len(idx)), replace=False))
    keep = rng.permutation(np.concatenate(keep))
    return x[keep], y[keep]


def write_splits(splits: dict[str, Split], out_dir: Path, manifest: dict) -> None:
    """Write the .npz files and manifest.json into a temporary folder, then move it into
    place in one step: a reader never sees half of a prepared folder."""
    with scratch(out_dir.parent, f".{out_dir.name}") as tmp:
        staged = tmp / "out"
        staged.mkdir()
        for name, (x, y) in splits.items():
            np.savez(staged / f"{name}.npz", x=x, y=y)
        write_json(staged / "manifest.json", manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)


def load_split(prepared_dir: Path, name: str) -> Split:
    """Read one split (train, val or test) of a prepared folder."""
    path = prepared_dir / f"{name}.npz"
    require_files(path, hint="run the prepare stage first")
    with np.load(path) as data:
        return data["x"], data["y"]


def load_manifest(prepared_dir: Path) -> dict:
    path = prepared_dir / "manifest.json"
    require_files(path, hint="run the prepare stage first")
    return json.loads(path.read_text())
