"""The promotion gate: is a challenger better than the champion beyond the noise of one test set?

Both models are scored on the same test images, so the comparison is paired:
- McNemar's exact test on the discordant images (one model right, the other wrong): a
  two-sided binomial test of `challenger_only` successes in `challenger_only + champion_only`
  trials at p = 0.5 (scipy.stats.binomtest; statsmodels' `mcnemar(exact=True)` is the same);
- a paired bootstrap confidence interval (scipy.stats.bootstrap, percentile method, the images
  resampled with both models' predictions together) for the gain in the metric: challenger
  minus champion, or champion minus challenger for the loss, so a positive gain is better.

The challenger is promoted only when the interval's lower bound is above `min_delta`. Identical
predictions give the interval [0, 0], never a promotion.

Predictions files (`evaluate` writes them, one per model version) are .npz archives of the
test `labels`, the `probabilities` (n, 10) and `test_sha256`, the digest of the test images and
labels they were made on.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cifar10_mlops.core import artifacts
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import replacing

METRICS = ("accuracy", "f1_weighted", "f1_macro", "loss")
RESAMPLES = 9999  # bootstrap resamples: the interval's bounds move by < 0.001 between seeds
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1] for the log loss, as evaluate does


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray  # (n,) true classes
    probabilities: np.ndarray  # (n, classes)
    test_sha256: str  # of the test split they were made on

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@dataclass(frozen=True)
class Comparison:
    metric: str
    challenger: float  # the metric's value on the test set
    champion: float
    gain: float  # challenger better by this much (lower loss counts as better)
    low: float  # the gain's confidence interval
    high: float
    confidence: float
    p_value: float  # McNemar's exact test, two-sided
    challenger_only: int  # images only the challenger classifies right
    champion_only: int  # images only the champion classifies right
    images: int
    test_sha256: str

    def beats(self, min_delta: float) -> bool:
        """Whether the challenger is better beyond noise: the interval above `min_delta`."""
        return self.low > min_delta

    def as_tags(self) -> dict[str, str]:
        """The comparison as model-version tags, `gate_<field>`."""
        return {f"gate_{k}": _text(v) for k, v in asdict(self).items()}

    def sentence(self, min_delta: float) -> str:
        """The comparison in one plain sentence, for the version's description."""
        name = f"test {self.metric.replace('_', ' ')}"
        better = "lower" if self.metric == "loss" else "higher"
        return (
            f"On the same {self.images:,} test images (sha256 {self.test_sha256[:12]}), {name} "
            f"{self.challenger:.4f} against the champion's {self.champion:.4f}: "
            f"{abs(self.gain):.4f} {better if self.gain >= 0 else 'worse'}, "
            f"{self.confidence:.0%} interval of the gain [{self.low:+.4f}, {self.high:+.4f}]; "
            f"{self.challenger_only} images only this version classifies right, "
            f"{self.champion_only} only the champion (McNemar exact p = {self.p_value:.3g}). "
            + (
                f"The lower bound is above {min_delta:g}: better beyond noise."
                if self.beats(min_delta)
                else f"The lower bound is not above {min_delta:g}: not shown better."
            )
        )


def _text(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def test_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a test split's images and labels, their shapes and dtypes included."""
    digest = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_predictions(path: Path, predictions: Predictions) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            labels=predictions.labels.astype(np.uint8),
            probabilities=predictions.probabilities.astype(np.float32),
            test_sha256=np.array(predictions.test_sha256),
        )


def load_predictions(path: Path, classes: int = 10) -> Predictions:
    """A predictions file, checked: one row of `classes` finite probabilities per label."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels, probs = npz["labels"], npz["probabilities"]
            digest = str(npz["test_sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: not a predictions file ({exc})") from None
    if labels.ndim != 1 or probs.shape != (len(labels), classes):
        raise PipelineError(
            f"{path}: {probs.shape} probabilities for {labels.shape} labels, expected "
            f"({len(labels)}, {classes})"
        )
    if not np.isfinite(probs).all() or not len(labels):
        raise PipelineError(f"{path}: empty, or probabilities that are not finite")
    return Predictions(labels.astype(np.int64), probs.astype(np.float64), digest)


def compare(
    challenger: Predictions,
    champion: Predictions,
    *,
    metric: str,
    confidence: float,
    seed: int,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Paired comparison of two models' predictions on the same test images."""
    from scipy import stats

    if challenger.test_sha256 != champion.test_sha256 or not np.array_equal(
        challenger.labels, champion.labels
    ):
        raise PipelineError(
            "the two models were scored on different test images: re-score the champion first"
        )
    y = challenger.labels
    right_new = challenger.predicted == y
    right_old = champion.predicted == y
    only_new = int((right_new & ~right_old).sum())
    only_old = int((right_old & ~right_new).sum())
    discordant = only_new + only_old
    p_value = stats.binomtest(only_new, discordant, 0.5).pvalue if discordant else 1.0

    data, statistic = _paired_gain(metric, challenger, champion)
    values = (_metric(metric, y, challenger), _metric(metric, y, champion))
    gain = values[0] - values[1] if metric != "loss" else values[1] - values[0]
    same = np.array_equal(challenger.predicted, champion.predicted)
    if metric == "loss":
        same = np.array_equal(challenger.probabilities, champion.probabilities)
    if same:
        low = high = float(gain)  # identical predictions: every resample's gain is this one
    else:
        with warnings.catch_warnings():  # a constant resample warns; the bounds still hold
            warnings.simplefilter("ignore")
            result = stats.bootstrap(
                data, statistic, paired=True, vectorized=True, n_resamples=resamples,
                batch=max(1, 4_000_000 // len(y)), confidence_level=confidence,
                method="percentile", rng=np.random.default_rng(seed),
            )  # fmt: skip
        low, high = map(float, result.confidence_interval)
    return Comparison(
        metric=metric, challenger=float(values[0]), champion=float(values[1]), gain=float(gain),
        low=low, high=high, confidence=confidence, p_value=float(p_value),
        challenger_only=only_new, champion_only=only_old, images=len(y),
        test_sha256=challenger.test_sha256,
    )  # fmt: skip


def _paired_gain(metric: str, challenger: Predictions, champion: Predictions):
    """(per-image data, statistic) whose bootstrap gives the gain's interval: the mean of
    per-image differences for accuracy and loss, the F1 difference on resampled images."""
    y = challenger.labels
    if metric == "accuracy":
        return ((challenger.predicted == y).astype(np.float64) - (champion.predicted == y),), _mean
    if metric == "loss":  # the champion's minus the challenger's, so that positive is better
        return (_log_loss(champion, y) - _log_loss(challenger, y),), _mean
    macro = metric == "f1_macro"
    classes = challenger.probabilities.shape[1]

    def statistic(labels, new, old, axis=-1):
        return _f1(labels, new, classes, macro) - _f1(labels, old, classes, macro)

    return (y, challenger.predicted, champion.predicted), statistic


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _log_loss(predictions: Predictions, y: np.ndarray) -> np.ndarray:
    p = predictions.probabilities[np.arange(len(y)), y]
    return -np.log(np.clip(p, EPSILON, 1))


def _metric(metric: str, y: np.ndarray, predictions: Predictions) -> float:
    if metric == "accuracy":
        return float((predictions.predicted == y).mean())
    if metric == "loss":
        return float(_log_loss(predictions, y).mean())
    classes = predictions.probabilities.shape[1]
    return float(_f1(y, predictions.predicted, classes, metric == "f1_macro"))


def _f1(labels: np.ndarray, predicted: np.ndarray, classes: int, macro: bool) -> np.ndarray:
    """F1 averaged over classes (macro, or weighted by support) along the last axis, as
    scikit-learn computes it (0 for a class with no true or predicted image)."""
    scores, supports = [], []
    for k in range(classes):
        true_k, pred_k = labels == k, predicted == k
        tp = (true_k & pred_k).sum(axis=-1)
        support, predicted_k = true_k.sum(axis=-1), pred_k.sum(axis=-1)
        denominator = support + predicted_k
        scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
        supports.append(support)
    scores, supports = np.stack(scores), np.stack(supports)
    if macro:
        return scores.mean(axis=0)
    return (scores * supports).sum(axis=0) / np.maximum(supports.sum(axis=0), 1)


# Where `evaluate` logs each test image's predictions in the run (read for the champion).
EVALUATION, PREDICTIONS = "evaluation", "test_predictions.npz"


def champion_predictions(
    champion, challenger: Predictions, test: tuple, batch_size: int = 500
) -> tuple[Predictions, str | None]:
    """The champion's predictions on the challenger's test images: those its run logged when
    they were made on the same images, else the champion model re-scored on `test`. Returns
    them and why the champion was re-scored (None when it was not)."""
    import mlflow

    client = mlflow.MlflowClient()
    label = f"the champion v{champion.version}"
    model_id = artifacts.model_id_of(champion)
    if model_id is None:
        raise PipelineError(f"{label} was not registered from a logged model: cannot check it")
    record = artifacts.logged_model_params(client, model_id)
    logged = _logged_predictions(champion.run_id, record.get(artifacts.PREDICTIONS_PARAM))
    if logged is not None and logged.test_sha256 == challenger.test_sha256:
        return logged, None
    why = (
        f"its run logged no {PREDICTIONS} as recorded"
        if logged is None
        else f"it was tested on other images (sha256 {logged.test_sha256[:12]})"
    )
    print(f"re-scoring champion v{champion.version} on this test set: {why}")
    try:
        model = artifacts.load_model(client, model_id, label).unwrap_python_model().model
    except PipelineError:
        raise
    except Exception as exc:  # MlflowException, OSError, Keras' errors: no loadable model
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"cannot re-score {label} (models:/{model_id}): {reason}") from None
    x, y = test
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    return Predictions(y.astype(np.int64), probabilities, challenger.test_sha256), why


def _logged_predictions(run_id: str, want: str | None) -> Predictions | None:
    """The test predictions `evaluate` logged into the run, or None when it logged none or
    they are not the ones recorded beside the champion's model (`want`, their sha256)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cifar10-champion-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{EVALUATION}/{PREDICTIONS}", dst_path=tmp
            )
        except Exception:  # MlflowException, OSError: no such artifact
            return None
        if artifacts.digest(Path(path)) != want:
            print(f"ignoring the champion's logged predictions: not the {PREDICTIONS} recorded")
            return None
        try:
            return load_predictions(Path(path))
        except PipelineError as exc:
            print(f"ignoring the champion's logged predictions: {exc}")
            return None
