"""Reading CIFAR-10's two archive layouts (core/dataset.py): the official release's pickles,
loaded safely, and images checked before they are decoded."""

import pickle
import tracemalloc

import numpy as np
import pytest

from cifar10_mlops.core.dataset import Layout, load_python_split, python_class_names
from cifar10_mlops.core.errors import PipelineError


def test_numpy_1_pickles_like_the_official_release_load(tmp_path):
    # The official batches were pickled by Python 2 with numpy 1, which names the array
    # machinery numpy.core.multiarray; numpy 2 writes numpy._core.multiarray.
    from cifar10_mlops.core.dataset import safe_unpickle

    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = pickle.dumps({b"data": array}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "data_batch_1"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(safe_unpickle(path)[b"data"], array)


def black_png(width: int, height: int) -> bytes:
    """A real width x height black RGB PNG, compressed row by row (never held whole)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    packer, row, idat = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path):
    """A 240 KB file of 9000 x 9000 pixels: 243 MB once decoded."""
    import subprocess
    import sys

    path = tmp_path / "bomb.png"
    path.write_bytes(black_png(9000, 9000))
    assert path.stat().st_size < 1 << 20
    code = (  # VmHWM: the peak of this process's memory since exec (ru_maxrss keeps the
        # parent's from before the fork)
        "import re; from pathlib import Path\n"
        "from cifar10_mlops.core.dataset import decode_image\n"
        "from cifar10_mlops.core.errors import PipelineError\n"
        f"try: decode_image(Path({str(path)!r}))\n"
        "except PipelineError as exc: print(exc)\n"
        "status = Path('/proc/self/status').read_text()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', status)[1]) // 1024)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    message, peak_mb = result.stdout.strip().splitlines()
    assert message == f"wrong-sized image {path}: expected 32x32 RGB, got (9000, 9000) RGB"
    assert int(peak_mb) < 200, f"peak memory {peak_mb} MB"


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": [np.zeros(1 << 20, np.uint8)] * 300, b"labels": [0] * 300},
         "data_batch_1: data is a list, not an array"),
        ({b"data": np.zeros((300, 3072), np.uint8), b"labels": [list(range(1 << 16))] * 300},
         "data_batch_1: labels are not all integers"),
    ],
    ids=["data", "labels"],
)  # fmt: skip
def test_a_pickle_of_repeated_references_is_refused_before_it_is_copied(tmp_path, batch, message):
    """A pickle stores an object once however often it is referred to: 1 MB on disk, 300 MB
    once np.asarray copies each reference (the issue's file: 20 GiB)."""
    data = pickle.dumps(batch, protocol=2)
    assert len(data) < 2 << 20
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (tmp_path / name).write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match=message):
            load_python_split(Layout("python", tmp_path), "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"{peak / 2**20:.0f} MiB"


def test_class_names_repeated_by_reference_are_refused(tmp_path):
    name = b"x" * (1 << 20)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [name] * 1000}))
    with pytest.raises(PipelineError, match="batches.meta: label_names is not a short list"):
        python_class_names(Layout("python", tmp_path))


def test_postscript_named_png_never_reaches_ghostscript(tmp_path):
    """Pillow picks a decoder by content: EPS named .png would run Ghostscript."""
    from cifar10_mlops.core.dataset import decode_image

    path = tmp_path / "0001.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n%%EOF\n")
    with pytest.raises(PipelineError, match=rf"corrupt image {path}: cannot identify image file"):
        decode_image(path)
