"""The prepared-data format between `prepare` and its readers (core/splits.py): splits that
read back as written, subsets of so many images per class, and a missing folder told as the
stage to run."""

import numpy as np
import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.splits import load_manifest, load_split, per_class_subset, write_splits
from helpers import make_images


def test_splits_read_back_as_written_and_replace_the_old_folder_whole(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "stale.npz").write_bytes(b"from an earlier run")
    x, y = make_images(2, seed=0)
    write_splits({"train": (x, y), "test": (x[:5], y[:5])}, out, {"source": "a.tar.gz"})
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.npz", "train.npz"]
    loaded = load_split(out, "train")
    assert np.array_equal(loaded[0], x) and np.array_equal(loaded[1], y)
    assert load_manifest(out) == {"source": "a.tar.gz"}
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no scratch folder left


def test_a_missing_split_names_the_stage_to_run(tmp_path):
    with pytest.raises(PipelineError, match="val.npz not found: run the prepare stage first"):
        load_split(tmp_path, "val")


def test_a_subset_takes_so_many_images_of_each_class(tmp_path):
    x, y = make_images(6, seed=0)
    sub_x, sub_y = per_class_subset(x, y, 4, np.random.default_rng(0))
    assert np.bincount(sub_y).tolist() == [4] * 10 and len(sub_x) == 40
    assert per_class_subset(x, y, None, np.random.default_rng(0))[1] is y  # None: all of them
    names = tuple("abcdefghij")
    with pytest.raises(PipelineError, match="class a has 6 images, fewer than the 7 asked for"):
        per_class_subset(x, y, 7, np.random.default_rng(0), classes=names)
