"""What ties an MLflow run to the pipeline state that made it, in MLflow's own terms.

- The data splits as MLflow datasets (`mlflow.log_input`), each with its own digest (the md5
  of its images and labels) and its class counts; source = the archive's name (or URL) with
  its sha256 as a `#sha256=` fragment, as pip pins a download; the DVC hash of
  data/prepared (what dvc.lock records for it) as a tag of each input.
- Run names a person can tell apart in the runs list, and a one-line description.
- Metric values as the decimal they stand for: Keras reports float32 values, which MLflow
  would show as 0.58799999952316284.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

# MLflow's input contexts for the three splits.
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
# float32 carries 7 significant decimal digits; more are conversion noise.
SIGNIFICANT = 7


def dvc_hash(folder: Path) -> str:
    """DVC 3's hash of a folder, as dvc.lock records it (`<md5>.dir`): the md5 of the JSON
    listing of its files' md5s. Computed with DVC's own tree code, over every file, once per
    process (0.5 s for the whole of data/prepared)."""
    return _dvc_hash(str(folder.resolve()))


@lru_cache(maxsize=4)
def _dvc_hash(folder: str) -> str:
    folder = Path(folder)
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        tree.add(path.relative_to(folder).parts, Meta(size=path.stat().st_size),
                 HashInfo("md5", digest.hexdigest()))  # fmt: skip
    tree.digest()
    return tree.hash_info.value


def data_source(manifest: dict) -> str:
    """The archive the splits came from: its name or URL (download.describe_source) and its
    sha256, `cifar10-jpg.tar.gz#sha256=685f...`."""
    return f"{manifest['source']}#sha256={manifest['source_sha256']}"


def split_digest(x: np.ndarray, y: np.ndarray) -> str:
    """A split's digest: the md5 of its images and labels (32 hex digits, within MLflow's
    36-character limit)."""
    digest = hashlib.md5(np.ascontiguousarray(x).view(np.uint8).ravel())
    digest.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    return digest.hexdigest()


def class_counts(y: np.ndarray) -> str:
    """`airplane 450, automobile 450, …`: how many images of each class a split holds."""
    from cifar10_mlops.core.dataset import CLASSES

    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(CLASSES))
    return ", ".join(f"{cls} {n}" for cls, n in zip(CLASSES, counts))


def split_dataset(x: np.ndarray, y: np.ndarray, name: str, manifest: dict):
    """One split as an MLflow dataset called `name`, with its own digest."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    source = data_source(manifest)
    kind = HTTPDatasetSource if source.startswith(("http://", "https://")) else None
    return mlflow.data.from_numpy(
        x, targets=y, name=name, digest=split_digest(x, y),
        source=(kind or LocalArtifactDatasetSource)(source),
    )  # fmt: skip


def log_splits(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], manifest: dict, data: Path, suffix: str = ""
):
    """Log each split of `data` (prepare's folder) into the active run as an input with its
    context, its class counts and the folder's DVC hash, named `cifar10-<split><suffix>` (a
    subset has a suffix); returns the datasets."""
    import mlflow

    folder = dvc_hash(data)
    datasets = {}
    for split, (x, y) in splits.items():
        datasets[split] = split_dataset(x, y, f"cifar10-{split}{suffix}", manifest)
        tags = {"class_counts": class_counts(y), "images": str(len(y)), "dvc_md5": folder}
        mlflow.log_input(datasets[split], context=CONTEXTS[split], tags=tags)
    return datasets


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """Metric values to float32's significant digits: 0.588, not 0.5879999995231628."""
    return {k: float(f"{float(v):.{SIGNIFICANT}g}") for k, v in metrics.items()}


def short_commit(commit: str) -> str:
    """`repo.head_commit()` as a run name shows it: 7 hex digits, `+` when dirty."""
    if commit == "unknown":
        return "nogit"
    return commit[:7] + ("+" if commit.endswith("-dirty") else "")


def run_name(stage: str, what: str) -> str:
    """`<stage>-<what>-<MMDD-HHMM UTC>`, e.g. `train-fast-16ep-1126-0403`: short enough for
    the runs list; the commit and the values are in the run's description and tags."""
    return f"{stage}-{what}-{time.strftime('%m%d-%H%M', time.gmtime())}"
