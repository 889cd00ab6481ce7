"""The promotion gate (training/gate.py) on hand-made predictions: a paired comparison that
promotes only a gain beyond the noise of the test images, and the predictions files it reads.
The register stage's use of it, on a real registry, is tested in test_register.py."""

import numpy as np
import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.training import gate

LABELS = np.arange(40) % 10


def predictions(right: int, *, digest: str = "d" * 64) -> gate.Predictions:
    """Confident predictions of LABELS, the first `right` of them right, the others one class
    off."""
    predicted = np.where(np.arange(len(LABELS)) < right, LABELS, (LABELS + 1) % 10)
    return gate.Predictions(LABELS, np.eye(10)[predicted] * 0.9 + 0.01, digest)


def compare(challenger, champion, metric="accuracy") -> gate.Comparison:
    return gate.compare(challenger, champion, metric=metric, confidence=0.95, seed=0, resamples=999)


def test_identical_predictions_are_no_gain():
    c = compare(predictions(24), predictions(24))
    assert (c.gain, c.low, c.high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (c.challenger_only, c.champion_only, c.images) == (0, 0, 40)
    assert not c.beats(0.0)
    assert c.sentence(0.0).endswith("The lower bound is not above 0: not shown better.")


def test_a_gain_on_many_images_beats_the_noise_and_a_small_one_does_not():
    clear = compare(predictions(36), predictions(16))  # 20 more of 40 right, none fewer
    assert clear.gain == pytest.approx(0.5) and clear.low > 0 and clear.beats(0.0)
    assert clear.p_value == pytest.approx(2 * 0.5**20)  # McNemar exact: 20 of 20 discordant
    assert clear.as_tags()["gate_challenger_only"] == "20"
    small = compare(predictions(18), predictions(16))  # 2 more of 40 right
    assert small.gain == pytest.approx(0.05) and small.low <= 0 < small.high
    assert small.p_value == pytest.approx(0.5) and not small.beats(0.0)
    assert compare(predictions(16), predictions(36)).high < 0  # worse: below 0


def test_predictions_on_other_test_images_are_not_compared():
    with pytest.raises(PipelineError, match="scored on different test images"):
        compare(predictions(20), predictions(20, digest="e" * 64))


def test_a_predictions_file_reads_back_and_a_wrong_one_is_named(tmp_path):
    path = tmp_path / "test_predictions.npz"
    gate.save_predictions(path, predictions(30))
    loaded = gate.load_predictions(path)
    assert loaded.test_sha256 == "d" * 64 and np.array_equal(loaded.labels, LABELS)
    assert np.array_equal(loaded.predicted, predictions(30).predicted)
    with pytest.raises(PipelineError, match=r"test_predictions.npz: \(40, 10\) probabilities"):
        gate.load_predictions(path, classes=5)
    path.write_bytes(b"not an archive")
    with pytest.raises(PipelineError, match="test_predictions.npz: not a predictions file"):
        gate.load_predictions(path)
