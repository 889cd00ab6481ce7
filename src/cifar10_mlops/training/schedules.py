"""Learning-rate schedules: the study's step decay (per epoch), a cosine with warm-up and
airbench's triangle (per step)."""

from __future__ import annotations

import keras

from cifar10_mlops.core.settings import TrainConfig


def step_schedule(cfg: TrainConfig):
    """The study's step decay: lr * factor ** (epoch // every), never below lr_min."""

    def schedule(epoch: int, _lr: float | None = None) -> float:
        return max(
            cfg.lr_min, cfg.learning_rate * cfg.lr_drop_factor ** (epoch // cfg.lr_drop_every)
        )

    return schedule


def cosine_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Per step: linear warm-up from lr_min to learning_rate over `warmup_epochs`, then a
    cosine decay back to lr_min at the end of the last epoch."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr_min if warmup else cfg.learning_rate,
        decay_steps=total - warmup,
        alpha=cfg.lr_min / cfg.learning_rate,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def triangle_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """airbench's schedule, per step: linear from lr_start x learning_rate up to learning_rate
    at `warmup_epochs`, then linear down to lr_end x learning_rate at the last step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return Triangle(cfg.learning_rate, cfg.lr_start, cfg.lr_end, warmup, total)


class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear learning rate: start -> peak over `warmup` steps -> end at `total`."""

    def __init__(self, peak: float, start: float, end: float, warmup: int, total: int):
        self.peak, self.start, self.end, self.warmup, self.total = peak, start, end, warmup, total

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.start + (1 - self.start) * step / max(1, self.warmup)
        falling = 1 + (self.end - 1) * (step - self.warmup) / max(1, self.total - self.warmup)
        factor = keras.ops.where(step < self.warmup, rising, keras.ops.maximum(falling, self.end))
        return self.peak * factor

    def get_config(self):
        return {
            "peak": self.peak, "start": self.start, "end": self.end,
            "warmup": self.warmup, "total": self.total,
        }  # fmt: skip


def scheduled_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The per-step schedule (cosine, triangle) over cfg.epochs, or None for the per-epoch
    step schedule, which a LearningRateScheduler callback applies."""
    if cfg.lr_schedule == "cosine":
        return cosine_schedule(cfg, steps_per_epoch)
    if cfg.lr_schedule == "triangle":
        return triangle_schedule(cfg, steps_per_epoch)
    return None
