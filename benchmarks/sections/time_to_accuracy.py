"""time_to_accuracy: the `train` stage's training at the given params, scored on the test
split after every epoch as the saved model scores (test-time augmentation included, scoring
time excluded): wall time until the test accuracy first reaches each of TARGETS, and the
final model's test and validation accuracy. Needs data/prepared.
"""

from __future__ import annotations

import time

import keras

STUDY_ACCURACY = 0.8015  # the study's test accuracy
TARGETS = (STUDY_ACCURACY, 0.90, 0.93, 0.94)


def accuracy(model, x, y) -> float:
    """The share of `x` that `model` classifies as `y`."""
    return float((model.predict(x, batch_size=1000, verbose=0).argmax(axis=1) == y).mean())


class TestProbe(keras.callbacks.Callback):
    """Test accuracy after every epoch, at `tta_level`; the clock starts when it is made and
    leaves out its own scoring time."""

    def __init__(self, test, tta_level: int):
        super().__init__()
        self.test, self.tta_level = test, tta_level
        self.scoring, self.curve, self.start = 0.0, [], time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        from cifar10_mlops.training.model import with_tta

        began = time.perf_counter()
        elapsed = began - self.start - self.scoring  # training time, scoring excluded
        scored = with_tta(self.model, self.tta_level)  # as the saved model predicts
        test_accuracy = accuracy(scored, *self.test)
        self.scoring += time.perf_counter() - began
        self.curve.append({"epoch": epoch + 1, "seconds": round(elapsed, 1),
                           "test_accuracy": test_accuracy})  # fmt: skip
        print(f"  epoch {epoch + 1}: {elapsed:.0f}s, test accuracy {test_accuracy:.4f}",
              flush=True)  # fmt: skip


def time_to_accuracy(data, params, *, strategy=None, probe: bool = True) -> dict:
    """The train stage's training (params.yaml as is), test accuracy after every epoch
    (`probe`; without it, only at the end), and the final model's at each TTA level."""
    from cifar10_mlops.stages.train import train
    from cifar10_mlops.training.model import with_tta

    train_split, val_split, test = data
    timer = TestProbe(test, params.train.tta_level)
    model, _ = train(
        params.train, train_split, val_split, seed=params.seed,
        callbacks=[timer] if probe else [], strategy=strategy,
    )  # fmt: skip
    train_seconds = time.perf_counter() - timer.start - timer.scoring
    # The lookahead leaves the model on its average after the last epoch's probe: score that,
    # on test and (for comparing with a tuned run) on validation.
    scored = with_tta(model, params.train.tta_level)
    final, final_val = accuracy(scored, *test), accuracy(scored, *val_split)
    # the same trained weights scored with each test-time augmentation
    by_tta = {str(level): accuracy(with_tta(model, level), *test) for level in (0, 1, 2)}
    return {
        "reached": reached(timer.curve),
        "train_seconds": round(train_seconds, 1),
        "final_test_accuracy": final,
        "final_val_accuracy": final_val,
        "final_test_accuracy_by_tta_level": by_tta,
        "curve": timer.curve,
    }


def reached(curve: list[dict]) -> dict:
    """Seconds and epoch at which the test accuracy first reached each of TARGETS (None: not
    reached)."""
    points = {}
    for target in TARGETS:
        point = next((p for p in curve if p["test_accuracy"] >= target), None)
        points[str(target)] = None if point is None else {
            "seconds": point["seconds"], "epoch": point["epoch"]}  # fmt: skip
    return points
