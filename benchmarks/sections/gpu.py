"""gpu (not in the default run): time_to_accuracy of the airbench94 preset (AIRBENCH94, the
same values as `make airbench`) on the first GPU, mixed precision: the issue's "0.94 in 30 s
on one H100" check. Needs data/prepared and a GPU; skipped without one.
"""

from __future__ import annotations

from sections.common import AIRBENCH94, with_train
from sections.time_to_accuracy import time_to_accuracy


def gpu(data, params) -> dict:
    """The airbench94 preset on the first GPU (mixed precision), as time_to_accuracy."""
    from cifar10_mlops.training import devices

    placement = devices.setup("auto")
    if not placement.describe().lower().count("gpu"):
        return {"skipped": f"no GPU ({placement.describe()})"}
    run = with_train(params, **AIRBENCH94)
    result = time_to_accuracy(data, run, strategy=placement.strategy)
    return {"device": placement.describe(), **result}
