"""What `cifar10-mlops serve --sample-dir DIR` keeps of the images it classifies, for the drift
test (`cifar10-mlops drift`, monitoring/): the newest `size` images, in a ring in memory, and
written to DIR/window.npz at most every `every` seconds when new ones came. Memory and disk are
bounded by `size` images (3 KiB each), whatever the traffic.

The file holds the images the clients sent: whoever may read DIR may see them. The server
makes DIR readable by its own user only (mode 0700).

DIR/drift.json is the drift test's last verdict, written there by `cifar10-mlops drift
--sample-dir DIR`; the server reports its score at /metrics (cifar10_drift_score).
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cifar10_mlops.core.files import replacing
from cifar10_mlops.serving.pyfunc import IMAGE_SHAPE

WINDOW = "window.npz"
VERDICT = "drift.json"
MAX_IMAGES = 100_000  # 300 MiB in memory, as much on disk

log = logging.getLogger("uvicorn.error")


class Sample:
    """The newest `size` images added, oldest first by `images()`."""

    def __init__(self, folder: Path, size: int, every: float = 60.0):
        if not 1 <= size <= MAX_IMAGES:
            raise ValueError(f"a sample of {size} images: from 1 to {MAX_IMAGES}")
        self.folder, self.every = Path(folder), every
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        self._ring = np.zeros((size, *IMAGE_SHAPE), np.uint8)
        self._lock = threading.Lock()
        self.added = 0  # images added since the start
        self._written = 0  # `added` when the window was last written

    def add(self, images: np.ndarray) -> None:
        """Keep uint8 images of shape (n, 32, 32, 3); anything else is not kept."""
        if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
            return
        size, n = len(self._ring), len(images)
        kept = images[-size:]  # of more than the ring holds, the last
        with self._lock:
            at = (self.added + n - len(kept)) % size  # where kept[0] goes
            first = min(len(kept), size - at)
            self._ring[at : at + first] = kept[:first]
            self._ring[: len(kept) - first] = kept[first:]
            self.added += n

    def images(self) -> np.ndarray:
        """A copy of the images kept, oldest first."""
        size = len(self._ring)
        with self._lock:
            if self.added <= size:
                return self._ring[: self.added].copy()
            at = self.added % size
            return np.concatenate([self._ring[at:], self._ring[:at]])

    def write(self, model: str = "") -> Path | None:
        """Write the window if images came since the last write; its path, or None."""
        added = self.added
        if added == self._written:
            return None
        path = self.folder / WINDOW
        with replacing(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, x=self.images(), added=added, model=model,
                written=datetime.now(UTC).isoformat(timespec="seconds"),
            )  # fmt: skip
        self._written = added
        return path

    def follow(self, model=lambda: "") -> threading.Event:
        """Write the window every `every` seconds in a daemon thread, naming the model that
        `model()` says is served; set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.every):
                try:
                    self.write(model())
                except OSError as exc:  # a full disk: try again next time, serve on
                    log.warning("cannot write the drift window to %s: %s", self.folder, exc)

        threading.Thread(target=loop, name="drift-sample", daemon=True).start()
        return stop

    def verdict(self) -> dict | None:
        """The drift test's last verdict (DIR/drift.json), or None if there is none readable."""
        try:
            verdict = json.loads((self.folder / VERDICT).read_text())
            return verdict if isinstance(verdict.get("score"), int | float) else None
        except (OSError, ValueError, AttributeError):
            return None


def read_window(path: Path) -> tuple[np.ndarray, dict]:
    """The images of a window file (`x`, uint8 (n, 32, 32, 3), n at most MAX_IMAGES) and what
    else it says. The shape is read from the array's header before any data, so a file that
    would unpack into more than that (a compressed one of zeros, say) is refused unread."""
    from cifar10_mlops.core.errors import PipelineError

    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as member:
            version = np.lib.format.read_magic(member)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
            if header is None:
                raise ValueError(f"x.npy is of .npy format {version}, not 1.0 or 2.0")
            shape, _, dtype = header(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise PipelineError(f"{path}: not a window of images ({reason})") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[1:] != IMAGE_SHAPE or shape[0] > MAX_IMAGES:
        raise PipelineError(
            f"{path}: expected uint8 images of shape (n, 32, 32, 3), n up to {MAX_IMAGES}, "
            f"got {dtype} {shape}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            x = data["x"]
            about = {k: data[k].item() for k in data.files if k != "x" and data[k].ndim == 0}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise PipelineError(f"{path}: not a window of images ({reason})") from None
    return x, about
