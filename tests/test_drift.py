"""The drift tests (monitoring/drift.py) on samples whose answer is known."""

import numpy as np
import pytest

from cifar10_mlops.monitoring import drift

RNG = np.random.default_rng


def population(n: int, seed: int, *, shift=0.0, favoured=0.1, sure=(8, 2), light=120.0) -> dict:
    """n images as reference.describe describes them: embeddings (16 dims, class means apart),
    predicted classes (class 0 a share `favoured`, the rest alike), top-1 confidences from
    Beta(sure) and brightness around `light`."""
    rng = RNG(seed)
    classes = rng.choice(10, n, p=[favoured] + [(1 - favoured) / 9] * 9)
    means = RNG(99).normal(0, 1, (10, 16))
    return {
        "embeddings": means[classes] + rng.normal(0, 1, (n, 16)) + shift,
        "predicted": classes,
        "confidence": rng.beta(*sure, n),
        "brightness": rng.normal(light, 30, n),
    }


def reference(n=600, seed=0):
    return population(n, seed)


def test_a_window_like_the_reference_passes_every_test():
    verdict = drift.check_window(reference(), population(200, seed=1), seed=0)
    assert not verdict.detected, verdict.p_values
    assert min(verdict.p_values.values()) > 0.01


@pytest.mark.parametrize(
    ("changed", "flagged"),
    [
        ({"shift": 0.6}, "embeddings"),  # every embedding moved
        ({"favoured": 0.5}, "classes"),  # class 0 five times as often
        ({"sure": (2, 2)}, "confidence"),  # the model much less sure
        ({"light": 140.0}, "brightness"),  # every image 20 levels brighter
    ],
)
def test_each_kind_of_shift_is_found_by_its_test(changed, flagged):
    verdict = drift.check_window(reference(), population(200, seed=1, **changed), seed=0)
    assert verdict.detected
    assert flagged in verdict.drifted
    assert verdict.p_values[flagged] < verdict.alpha / 4


def test_the_false_alarm_rate_of_clean_windows_is_about_alpha():
    ref = reference()
    alarms = [
        drift.check_window(ref, population(100, seed=s), alpha=0.3, permutations=99, seed=s)
        for s in range(1, 31)
    ]
    rate = sum(v.detected for v in alarms) / len(alarms)
    assert rate <= 0.5  # 0.3 is the design; a test that always fires would give 1.0
    assert any(not v.detected for v in alarms)


def test_the_mmd_p_value_is_a_permutation_p_value():
    ref = reference()["embeddings"]
    same = drift.mmd_test(ref, ref[:100] + 0.0, 99, RNG(0))
    far = drift.mmd_test(ref, ref[:100] + 5.0, 99, RNG(0))
    assert far[0] > same[0]
    assert far[1] == 1 / 100  # no permutation as extreme: the smallest p 99 can give
    assert same[1] > 0.05


def test_a_window_of_one_image_or_of_unequal_parts_is_refused():
    with pytest.raises(ValueError, match="2 or more images"):
        drift.check_window(reference(), population(1, seed=1))
    window = population(10, seed=1)
    window["brightness"] = window["brightness"][:9]
    with pytest.raises(ValueError, match="9 brightness"):
        drift.check_window(reference(), window)


def test_the_verdict_reads_as_json():
    verdict = drift.check_window(reference(), population(50, seed=1, shift=3.0), seed=0)
    out = verdict.as_dict()
    assert out["detected"] is True and out["drifted"][0] == "embeddings"
    assert out["score"] == verdict.statistics["embeddings"] > 0
    assert set(out["p_values"]) == set(drift.TESTS)
