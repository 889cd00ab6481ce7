"""What the model server keeps for the drift test (serving/sample.py): the newest images only,
in order, written when new ones came, readable by its own user only."""

import json
import stat

import numpy as np
import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.serving.sample import MAX_IMAGES, VERDICT, WINDOW, Sample, read_window


def images(first: int, n: int) -> np.ndarray:
    """n images whose every pixel is their number, first, first + 1, ..."""
    return np.broadcast_to(
        (np.arange(first, first + n) % 256).astype(np.uint8)[:, None, None, None], (n, 32, 32, 3)
    ).copy()


def numbers(x: np.ndarray) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def test_the_newest_images_are_kept_oldest_first(tmp_path):
    sample = Sample(tmp_path / "s", size=5)
    sample.add(images(0, 3))
    assert numbers(sample.images()) == [0, 1, 2]
    sample.add(images(3, 4))  # wraps around the ring
    assert numbers(sample.images()) == [2, 3, 4, 5, 6]
    sample.add(images(7, 12))  # more than it holds at once
    assert numbers(sample.images()) == [14, 15, 16, 17, 18]
    assert sample.added == 19


def test_what_is_not_a_batch_of_images_is_not_kept(tmp_path):
    sample = Sample(tmp_path / "s", size=5)
    sample.add(np.zeros((2, 32, 32, 3), np.float32))
    sample.add(np.zeros((2, 28, 28, 3), np.uint8))
    assert sample.added == 0 and len(sample.images()) == 0


def test_the_window_is_written_only_when_new_images_came(tmp_path):
    sample = Sample(tmp_path / "s", size=4)
    assert sample.write("m v1") is None and not (tmp_path / "s" / WINDOW).exists()
    sample.add(images(0, 6))
    path = sample.write("m v1")
    x, about = read_window(path)
    assert numbers(x) == [2, 3, 4, 5]
    assert about["added"] == 6 and about["model"] == "m v1"
    assert sample.write("m v1") is None
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700


@pytest.mark.parametrize("size", [0, 100_001])
def test_a_sample_size_out_of_bounds_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="from 1 to 100000"):
        Sample(tmp_path, size)


def test_the_last_verdict_is_read_when_it_is_one(tmp_path):
    sample = Sample(tmp_path, 2)
    assert sample.verdict() is None
    (tmp_path / VERDICT).write_text("{not json")
    assert sample.verdict() is None
    (tmp_path / VERDICT).write_text(json.dumps({"score": "high"}))
    assert sample.verdict() is None
    (tmp_path / VERDICT).write_text(json.dumps({"score": 0.2, "detected": True}))
    assert sample.verdict()["detected"] is True


@pytest.mark.parametrize(
    "arrays",
    [{"x": np.zeros((2, 32, 32), np.uint8)}, {"x": np.zeros((2, 32, 32, 3))}, {"y": np.ones(2)}],
    ids=["grey", "float", "no images"],
)
def test_a_window_file_of_anything_else_is_refused(tmp_path, arrays):
    path = tmp_path / WINDOW
    np.savez(path, **arrays)
    with pytest.raises(PipelineError, match=str(path)):
        read_window(path)


def test_a_window_that_would_unpack_into_more_than_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / WINDOW
    np.savez_compressed(path, x=np.zeros((MAX_IMAGES + 1, 32, 32, 3), np.uint8))
    assert path.stat().st_size < 2_000_000  # 300 MiB of zeros, compressed
    with pytest.raises(PipelineError, match="n up to 100000, got uint8 \\(100001, 32, 32, 3\\)"):
        read_window(path)


def test_a_file_that_is_no_npz_is_refused(tmp_path):
    path = tmp_path / WINDOW
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(PipelineError, match="not a window of images"):
        read_window(path)
