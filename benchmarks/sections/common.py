"""What the sections share: airbench's recipes in params.yaml's terms, `with_train` to apply
one, the data (data/prepared, or random images of its shape) and a steady-state step timer.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# airbench94's recipe (legacy/airbench94.py) in params.yaml's terms; `make airbench` sets the
# same values (tests/test_tune.py checks).
AIRBENCH94 = {
    "architecture": "fast", "conv_1_filters": 64, "conv_2_filters": 256,
    "conv_3_filters": 256, "batch_size": 1024, "epochs": 10, "optimizer": "airbench",
    "learning_rate": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bias_lr_scale": 64.0,
    "lr_schedule": "triangle", "warmup_epochs": 2.3, "lr_start": 0.2, "lr_end": 0.07,
    "label_smoothing": 0.2, "dirac_init": True, "whiten_bias_epochs": 3, "lookahead": True,
    "tta_level": 2, "head": "airbench94", "dropout": 0.0, "early_stopping_patience": None,
}  # fmt: skip
# airbench94_muon.py's recipe (`make airbench-muon`); see the Makefile for the unit conversion.
AIRBENCH94_MUON = {
    "architecture": "fast", "conv_1_filters": 64, "conv_2_filters": 256,
    "conv_3_filters": 256, "batch_size": 2000, "epochs": 8, "optimizer": "muon",
    "learning_rate": 5260.0, "muon_learning_rate": 0.24, "muon_momentum": 0.6,
    "momentum": 0.85, "weight_decay": 0.0157, "bias_lr_scale": 0.0791,
    "lr_schedule": "triangle", "warmup_epochs": 0.0, "lr_start": 1.0, "lr_end": 0.0,
    "label_smoothing": 0.2, "dirac_init": True, "whiten_bias_epochs": 3, "lookahead": False,
    "tta_level": 2, "head": "airbench94_muon", "dropout": 0.0, "early_stopping_patience": None,
}  # fmt: skip


def with_train(params, **values):
    """`params` with `train` values replaced (augment.* keys go to train.augment)."""
    augment = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("augment.")}
    rest = {k: v for k, v in values.items() if not k.startswith("augment.")}
    if "alternating_flip" in rest:
        augment["alternating_flip"] = rest.pop("alternating_flip")
    augmented = params.train.augment.model_copy(update=augment)
    train = params.train.model_copy(update={**rest, "augment": augmented})
    return params.model_copy(update={"train": train})


def load_data(prepared: Path, n_synthetic: int):
    """(train, val, test) splits of data/prepared, or random ones when it is absent."""
    from cifar10_mlops.core.splits import load_split

    if (prepared / "train.npz").exists():
        return tuple(load_split(prepared, name) for name in ("train", "val", "test")), "prepared"
    rng = np.random.default_rng(0)

    def fake(n):
        return rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n, np.uint8)

    return (fake(n_synthetic), fake(1000), fake(1000)), "random"


class StepTimer(keras.callbacks.Callback):
    """Times training steps after the first `warmup` (graph tracing, caches, pipeline fill)."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.steps, self.start = warmup, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()

    def rate(self, batch_size: int) -> float:
        """Images per second over the timed steps."""
        return (self.steps - self.warmup) * batch_size / (time.perf_counter() - self.start)
