"""The training code `train` and `tune` share: schedules and the input pipeline."""

from dataclasses import replace

import numpy as np
import pytest

from cifar10_mlops import fit
from cifar10_mlops.config import load_params
from conftest import REPO


def test_step_schedule_reproduces_the_studys_first_phase():
    # Study §4.2: Adam at 1e-3, divided by 10 after the tenth epoch and kept at 1e-4.
    cfg = load_params(REPO / "params.yaml").train
    study = replace(cfg, learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.1, lr_min=1e-4)
    lrs = [fit.step_schedule(study)(epoch) for epoch in range(30)]
    assert lrs[:10] == [1e-3] * 10
    assert lrs[10:] == pytest.approx([1e-4] * 20)
    halving = replace(cfg, learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.5, lr_min=0.0)
    assert fit.step_schedule(halving)(25) == pytest.approx(2.5e-4)  # study §4.3


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = load_params(REPO / "params.yaml").train
    cfg = replace(cfg, learning_rate=0.2, lr_min=0.0, warmup_epochs=1.0, epochs=4)
    schedule = fit.cosine_schedule(cfg, steps_per_epoch=10)
    lrs = [float(schedule(step)) for step in range(41)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.2)
    assert lrs[25] == pytest.approx(0.1)  # half-way through the decay
    assert lrs[40] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_augmented_dataset_yields_shuffled_uint8_batches_with_one_hot_labels():
    x = np.arange(20, dtype=np.uint8).repeat(32 * 32 * 3).reshape(20, 32, 32, 3)
    y = np.arange(20, dtype=np.uint8) % 10
    cfg = load_params(REPO / "params.yaml").train.augment
    batches = list(fit.make_dataset(x, y, 8, seed=0, augment=cfg))
    assert [len(b[1]) for b in batches] == [8, 8, 4]
    assert batches[0][0].dtype == "uint8"
    order = np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches])  # image i is all i
    assert sorted(order) == list(range(20)) and list(order) != list(range(20))
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels, np.eye(10)[order % 10])
