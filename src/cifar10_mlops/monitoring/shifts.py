"""The shifted windows the drift detector is validated on (benchmarks/drift_validation.py and
tests/test_drift.py): test images recompressed, noisier, brighter, or of one class far more
often than the others. Each takes and returns uint8 images of shape (n, 32, 32, 3)."""

from __future__ import annotations

import io

import numpy as np

SHIFTS = ("jpeg", "noise", "brightness", "imbalance")


def jpeg(images: np.ndarray, quality: int = 10) -> np.ndarray:
    """Each image saved as a JPEG of `quality` (1-95) and decoded again."""
    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of standard deviation `sigma` pixel levels (of 255) on every channel."""
    noisy = images.astype(np.float32) + rng.normal(0, sigma, images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def brightness(images: np.ndarray, delta: float) -> np.ndarray:
    """Every pixel `delta` levels brighter (darker when negative), clipped to 0-255."""
    return np.clip(images.astype(np.float32) + delta, 0, 255).astype(np.uint8)


def imbalanced(
    labels: np.ndarray, size: int, favoured: int, share: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices of a `size`-image window in which class `favoured` makes `share` of the images
    and the other classes the rest, at random."""
    many = int(round(size * share))
    ours, others = np.flatnonzero(labels == favoured), np.flatnonzero(labels != favoured)
    picked = np.r_[rng.choice(ours, many, replace=False), rng.choice(others, size - many, False)]
    return rng.permutation(picked)
