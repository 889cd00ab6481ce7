"""Whether a window of images the server was asked to classify looks like the reference the
model was evaluated with (monitoring/reference.py): four two-sample tests, each with a
p-value, and drift when any of them is below `alpha` / 4 (Bonferroni).

- **embeddings**: maximum mean discrepancy (MMD, Gretton et al. 2012) between the
  penultimate-layer embeddings of the window and of the reference, with a Gaussian kernel
  whose width is the median distance between reference embeddings; its p-value comes from a
  permutation test (the statistic over `permutations` random splits of the pooled set).
  This is what finds what the image looks like: blur, noise, compression, light.
- **classes**: a chi-square test of the window's predicted-class counts against the
  reference's predicted-class shares. Finds a change of what is asked: one class far more
  often than in training.
- **confidence**: a Kolmogorov-Smirnov test of the top-1 probabilities. Finds a model that is
  less sure than it was, whatever the cause.
- **brightness**: a Kolmogorov-Smirnov test of each image's mean pixel value. Finds a change of
  light or exposure that a network trained to ignore it shrugs off in its embeddings (measured:
  +30 levels went unseen by the other three tests; docs/monitoring.md).

Evidently's embedding-drift preset was the first choice, but evidently 0.7.23 does not import
beside the lock's pandas 3 (`infer_dtype_from_object` is gone): docs/monitoring.md says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from cifar10_mlops.core.settings import DRIFT_TESTS as TESTS  # params.yaml checks alpha by them

KEYS = ("embeddings", "predicted", "confidence", "brightness")  # what a window has per image


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A window's test: each test's statistic and p-value, and whether it drifted."""

    images: int
    alpha: float
    statistics: dict[str, float]
    p_values: dict[str, float]

    @property
    def drifted(self) -> list[str]:
        """The tests whose p-value is under alpha / 4 (their Bonferroni share)."""
        return [t for t in TESTS if self.p_values[t] < self.alpha / len(TESTS)]

    @property
    def detected(self) -> bool:
        return bool(self.drifted)

    @property
    def score(self) -> float:
        """One number for a dashboard: the MMD² of the embeddings (0: alike; it grows with the
        shift). The p-values, not this, decide."""
        return self.statistics["embeddings"]

    def as_dict(self) -> dict:
        return {
            "detected": self.detected, "drifted": self.drifted, "score": self.score,
            "images": self.images, "alpha": self.alpha,
            "statistics": self.statistics, "p_values": self.p_values,
        }  # fmt: skip


def check_window(
    reference: dict, window: dict, *, alpha: float = 0.01, permutations: int = 500, seed: int = 0
) -> Verdict:
    """Test `window` against `reference`: dicts of `embeddings`, `predicted`, `confidence` and
    `brightness` per image, as reference.describe makes them."""
    embeddings = window["embeddings"]
    if len(embeddings) < 2 or any(len(window[key]) != len(embeddings) for key in KEYS):
        raise ValueError(
            f"a window needs 2 or more images, each with its {', '.join(KEYS)}; got "
            + ", ".join(f"{len(window[key])} {key}" for key in KEYS)
        )
    rng = np.random.default_rng(seed)
    mmd2, p_mmd = mmd_test(reference["embeddings"], embeddings, permutations, rng)
    chi2, p_classes = class_test(reference["predicted"], window["predicted"])
    ks_conf, p_conf = stats.ks_2samp(reference["confidence"], window["confidence"])
    ks_light, p_light = stats.ks_2samp(reference["brightness"], window["brightness"])
    return Verdict(
        images=len(embeddings), alpha=alpha,
        statistics={"embeddings": mmd2, "classes": chi2, "confidence": float(ks_conf),
                    "brightness": float(ks_light)},
        p_values={"embeddings": p_mmd, "classes": p_classes, "confidence": float(p_conf),
                  "brightness": float(p_light)},
    )  # fmt: skip


def mmd_test(
    reference: np.ndarray, window: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """The (biased) MMD² of the two samples under a Gaussian kernel of median width, and its
    permutation p-value: (1 + permuted values ≥ it) / (1 + permutations)."""
    pooled = np.concatenate([reference, window]).astype(np.float64)
    squared = _squared_distances(pooled)
    m = len(reference)
    width = np.median(squared[:m, :m][np.triu_indices(m, 1)])
    kernel = np.exp(-squared / max(width, 1e-12))
    signs = np.empty((len(pooled), permutations + 1))
    signs[:, 0] = np.r_[np.full(m, 1 / m), np.full(len(window), -1 / len(window))]
    for i in range(1, permutations + 1):
        signs[:, i] = rng.permutation(signs[:, 0])
    # a' K a for each column a: MMD² of the split that a marks (1/m in X, -1/n in Y).
    values = np.einsum("ij,ij->j", signs, kernel @ signs)
    observed = float(values[0])
    p = (1 + int((values[1:] >= observed).sum())) / (1 + permutations)
    return observed, p


def class_test(reference: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Chi-square of the window's predicted-class counts against the reference's shares (a
    class the reference never predicts counts as 1 in it, so no expected count is 0)."""
    classes = int(max(reference.max(), predicted.max())) + 1
    shares = np.bincount(reference, minlength=classes) + 1.0
    expected = shares / shares.sum() * len(predicted)
    chi2, p = stats.chisquare(np.bincount(predicted, minlength=classes), expected)
    return float(chi2), float(p)


def _squared_distances(x: np.ndarray) -> np.ndarray:
    norms = (x * x).sum(axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * x @ x.T, 0)
