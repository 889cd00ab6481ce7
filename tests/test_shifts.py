"""The shifted windows the drift detector is validated on (monitoring/shifts.py)."""

import numpy as np
import pytest

from cifar10_mlops.monitoring import shifts

RNG = np.random.default_rng
IMAGES = RNG(0).integers(40, 200, (20, 32, 32, 3), dtype=np.uint8)


def test_jpeg_quality_10_loses_detail():
    out = shifts.jpeg(IMAGES, quality=10)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - IMAGES).mean() > 10


def test_noise_has_the_standard_deviation_asked_for():
    out = shifts.noise(IMAGES, 10.0, RNG(1))
    assert (out.astype(float) - IMAGES).std() == pytest.approx(10, rel=0.05)


def test_brightness_moves_every_pixel_and_clips():
    out = shifts.brightness(IMAGES, 30)
    assert (out.astype(int) - IMAGES == 30).all()  # 40-199 + 30 stays within 0-255
    assert shifts.brightness(IMAGES, 300).min() == 255


def test_an_imbalanced_window_has_the_share_asked_for():
    labels = np.repeat(np.arange(10), 100)
    idx = shifts.imbalanced(labels, 200, favoured=3, share=0.5, rng=RNG(2))
    assert len(set(idx)) == 200
    assert (labels[idx] == 3).sum() == 100
