"""study_speed: the study's accuracy the way airbench times its runs, a whole training that
ends at or above it: STUDY_SPEED (airbench94's recipe at 32/64/128 for 4 epochs; the rest,
augmentation and seed, from params.yaml, not --set), timed and scored as time_to_accuracy
scores. Needs data/prepared.
"""

from __future__ import annotations

from sections.common import AIRBENCH94, with_train
from sections.time_to_accuracy import time_to_accuracy

# The study's 0.8015 in the least training measured here: airbench94's recipe at a quarter of
# the widths (32/64/128) for 4 epochs, its warm-up at the same 23 % (0.8214 +- 0.0023 over
# 3 seeds in 131 s on 2 CPU cores, docs/benchmarks.md).
STUDY_SPEED = {
    **AIRBENCH94, "conv_1_filters": 32, "conv_2_filters": 64, "conv_3_filters": 128,
    "epochs": 4, "warmup_epochs": 0.9,
}  # fmt: skip


def study_speed(data, params) -> dict:
    """time_to_accuracy of STUDY_SPEED on `params` (params.yaml as loaded, without --set)."""
    return time_to_accuracy(data, with_train(params, **STUDY_SPEED))
