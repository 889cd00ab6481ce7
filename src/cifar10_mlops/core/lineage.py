"""What ties an MLflow run to the pipeline state that made it, in MLflow's own terms.

- The data splits as MLflow datasets (`mlflow.log_input`): digest = the DVC hash of
  data/prepared (what dvc.lock records for it), source = the archive's name (or URL) with its
  sha256 as a `#sha256=` fragment, as pip pins a download.
- Run names a person can tell apart, and a one-line description.
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


def split_dataset(x: np.ndarray, y: np.ndarray, name: str, manifest: dict, digest: str):
    """One split as an MLflow dataset called `name`, with the DVC digest."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    source = data_source(manifest)
    kind = HTTPDatasetSource if source.startswith(("http://", "https://")) else None
    return mlflow.data.from_numpy(
        x, targets=y, name=name, digest=digest,
        source=(kind or LocalArtifactDatasetSource)(source),
    )  # fmt: skip


def log_splits(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], manifest: dict, data: Path, suffix: str = ""
):
    """Log each split of `data` (prepare's folder) into the active run as an input with its
    context, named `cifar10-<split><suffix>` (a subset needs a suffix: MLflow keeps one
    profile per name and digest); returns the datasets."""
    import mlflow

    digest = dvc_hash(data)
    datasets = {}
    for split, (x, y) in splits.items():
        datasets[split] = split_dataset(x, y, f"cifar10-{split}{suffix}", manifest, digest)
        mlflow.log_input(datasets[split], context=CONTEXTS[split])
    return datasets


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """Metric values to float32's significant digits: 0.588, not 0.5879999995231628."""
    return {k: float(f"{float(v):.{SIGNIFICANT}g}") for k, v in metrics.items()}


def short_commit(commit: str) -> str:
    """`repo.head_commit()` as a run name shows it: 7 hex digits, `+` when dirty."""
    if commit == "unknown":
        return "nogit"
    return commit[:7] + ("+" if commit.endswith("-dirty") else "")


def run_name(stage: str, what: str, commit: str) -> str:
    """`<stage>-<what>-<commit>-<UTC time>`, e.g. `train-fast-64.128.256-11ep-0b0cda9-1126T0403`:
    two runs of the same recipe differ in commit or time."""
    return f"{stage}-{what}-{short_commit(commit)}-{time.strftime('%m%dT%H%M', time.gmtime())}"
