"""Stage `prepare`: decode the raw archive into uint8 arrays and split off validation data.

Reads  data/raw/ (from `download`: the archive, extracted here into a temporary folder with
       download's checks, and its manifest), params.yaml `prepare` and `seed`.
Writes data/prepared/ in the format of splits.py: {train,val,test}.npz and manifest.json, a
       stratified validation split taken from the training set so that only `evaluate` ever
       touches the test set; reports/prepare/class_counts.json and the study's 2x5 sample
       grid reports/prepare/samples.png.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.model_selection import train_test_split

from cifar10_mlops.core import dataset
from cifar10_mlops.core.archive import extract
from cifar10_mlops.core.settings import PrepareConfig, load_params
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import require_files, write_json
from cifar10_mlops.core.splits import Split, per_class_subset, write_splits
from cifar10_mlops.core.stage import run_stage, stage_parser


def check_split(name: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.shape[1:] != dataset.IMAGE_SHAPE:
        raise PipelineError(
            f"{name}: expected uint8 images of 32x32x3, got {x.dtype} {x.shape[1:]}"
        )
    if len(x) != len(y):
        raise PipelineError(f"{name}: {len(x)} images but {len(y)} labels")
    missing = sorted(set(range(len(dataset.CLASSES))) - set(np.unique(y).tolist()))
    if missing:
        raise PipelineError(
            f"{name}: no images of class {', '.join(dataset.CLASSES[i] for i in missing)}"
        )


def split_data(
    train: Split,
    test: Split,
    *,
    val_fraction: float,
    train_per_class: int | None,
    test_per_class: int | None,
    seed: int,
) -> dict[str, Split]:
    """Subset (optional), then a stratified train/val split of the training set."""
    rng = np.random.default_rng(seed)
    x, y = per_class_subset(*train, train_per_class, rng, classes=dataset.CLASSES)
    test = per_class_subset(*test, test_per_class, rng, classes=dataset.CLASSES)
    n_val = round(len(y) * val_fraction)
    if n_val < len(dataset.CLASSES) or len(y) - n_val < len(dataset.CLASSES):
        raise PipelineError(
            f"val_fraction {val_fraction} of {len(y)} training images leaves a split with fewer "
            f"images than the {len(dataset.CLASSES)} classes"
        )
    x_tr, x_val, y_tr, y_val = train_test_split(
        x, y, test_size=n_val, stratify=y, random_state=seed
    )
    splits = {"train": (x_tr, y_tr), "val": (x_val, y_val), "test": test}
    for name, (xs, ys) in splits.items():
        check_split(name, xs, ys)
    return splits


def class_counts(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    return {
        name: {c: int((y == i).sum()) for i, c in enumerate(dataset.CLASSES)}
        for name, (_, y) in splits.items()
    }


def sample_grid(x: np.ndarray, y: np.ndarray, path: Path, seed: int) -> None:
    """The study's figure: ten random images in a 2x5 grid, each titled with its label."""
    idx = np.random.default_rng(seed).choice(len(x), size=min(10, len(x)), replace=False)
    fig = Figure(figsize=(15, 6))
    for i, j in enumerate(idx, 1):
        ax = fig.add_subplot(2, 5, i)
        ax.imshow(x[j])
        ax.set_title(f"Label: {dataset.CLASSES[y[j]]}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def read_manifest(raw_dir: Path) -> dict:
    path = raw_dir / "manifest.json"
    require_files(path, hint="run the download stage first")
    manifest = json.loads(path.read_text())
    if "archive" not in manifest:
        raise PipelineError(f"{path} is from an extracting download: rerun the download stage")
    return manifest


def decode(raw_dir: Path, manifest: dict) -> dict[str, Split]:
    """Decode both splits of data/raw's archive, checking shapes, classes and the manifest's
    counts."""
    archive = raw_dir / manifest["archive"]
    if not archive.is_file():
        raise PipelineError(f"{archive} not found: rerun the download stage")
    # In the temporary folder, which run_stage makes this stage's own scratch folder: the
    # next run removes what a killed one left.
    with tempfile.TemporaryDirectory(prefix="extract-") as tmp:
        tmp = Path(tmp)
        extract(archive, tmp)
        layout = dataset.Layout(manifest["format"], tmp / manifest["root"])
        try:
            splits = {split: dataset.load_split(layout, split) for split in dataset.SPLITS}
        except PipelineError as exc:  # name a bad file by its place in the archive
            raise PipelineError(str(exc).replace(f"{tmp}/", f"{archive}:")) from None
    decoded = {}
    for split, (x, y) in splits.items():
        check_split(split, x, y)
        found = class_counts({split: (x, y)})[split]
        if found != manifest["counts"][split]:
            raise PipelineError(
                f"{split}: decoded class counts {found} differ from {raw_dir}/manifest.json "
                f"{manifest['counts'][split]}; rerun the download stage"
            )
        decoded[split] = (x, y)
    return decoded


def prepare(raw_dir: Path, cfg: PrepareConfig, seed: int) -> tuple[dict[str, Split], dict]:
    """Decode data/raw and split it as `cfg` says; returns the splits and their lineage."""
    manifest = read_manifest(raw_dir)
    decoded = decode(raw_dir, manifest)
    splits = split_data(
        decoded["train"],
        decoded["test"],
        val_fraction=cfg.val_fraction,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
        seed=seed,
    )
    lineage = {
        "source": manifest["source"],
        "source_sha256": manifest["sha256"],
        "source_md5": manifest["md5"],
        "images": {name: len(y) for name, (_, y) in splits.items()},
    }
    return splits, lineage


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, raw="download's output (data/raw)", out="folder for the .npz splits",
        reports="folder for counts and samples",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    splits, lineage = prepare(args.raw, params.prepare, params.seed)
    counts = class_counts(splits)
    write_splits(splits, args.out, lineage)
    write_json(args.reports / "class_counts.json", counts)
    sample_grid(*splits["train"], args.reports / "samples.png", params.seed)
    print({name: sum(c.values()) for name, c in counts.items()}, "images ->", args.out)


if __name__ == "__main__":
    run_stage(main)
