"""The learning-rate schedules: the study's step decay, the cosine with warm-up and
airbench's triangle, as the rates a run would log."""

import pytest

from cifar10_mlops.core.settings import load_params
from cifar10_mlops.training import schedules
from cifar10_mlops.training.schedules import Triangle
from helpers import REPO


def test_step_schedule_reproduces_the_studys_first_phase():
    # Study §4.2: Adam at 1e-3, divided by 10 after the tenth epoch and kept at 1e-4.
    cfg = load_params(REPO / "params.yaml").train
    study = cfg.model_copy(
        update=dict(learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.1, lr_min=1e-4)
    )
    lrs = [schedules.step_schedule(study)(epoch) for epoch in range(30)]
    assert lrs[:10] == [1e-3] * 10
    assert lrs[10:] == pytest.approx([1e-4] * 20)
    halving = cfg.model_copy(
        update=dict(learning_rate=1e-3, lr_drop_every=10, lr_drop_factor=0.5, lr_min=0.0)
    )
    assert schedules.step_schedule(halving)(25) == pytest.approx(2.5e-4)  # study §4.3


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = load_params(REPO / "params.yaml").train
    cfg = cfg.model_copy(update=dict(learning_rate=0.2, lr_min=0.0, warmup_epochs=1.0, epochs=4))
    schedule = schedules.cosine_schedule(cfg, steps_per_epoch=10)
    lrs = [float(schedule(step)) for step in range(41)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.2)
    assert lrs[25] == pytest.approx(0.1)  # half-way through the decay
    assert lrs[40] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_triangle_schedule_rises_to_the_peak_then_falls_to_the_end_fraction():
    schedule = Triangle(10.0, 0.2, 0.07, warmup=10, total=100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates == pytest.approx([2.0, 6.0, 10.0, 10 * (1 - 0.93 / 2), 0.7], rel=1e-5)
    # No warm-up (airbench94_muon): from the peak straight down to the end fraction.
    schedule = Triangle(10.0, 1.0, 0.0, warmup=0, total=100)
    assert [float(schedule(step)) for step in (0, 50, 100)] == pytest.approx([10.0, 5.0, 0.0])
