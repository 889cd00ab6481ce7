"""The building blocks of the settings models: the names the code dispatches on, the upper
bounds past which a value cannot run, bounded field types, and `Section`, the frozen,
strict, extra="forbid" base of every model."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cifar10_mlops.core import validation as checks

# The names the code dispatches on have one home each: these types. model.py builds the
# architectures, training/optimizers.py and schedules.py the optimizers and schedules.
Architecture = Literal["baseline", "deeper", "fast"]
Optimizer = Literal["adam", "sgd", "nesterov", "airbench", "muon"]
Head = Literal["airbench94", "airbench94_muon"]
Schedule = Literal["step", "cosine", "triangle"]
ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)

# Upper bounds: values above them cannot run (NumPy takes seeds below 2**32) or would exhaust
# a machine's memory or time before doing anything useful. Far above any sensible setting.
MAX_SEED = 2**32 - 1  # also every other integer's backstop
MAX_FILTERS = 4096  # conv filters per layer
MAX_UNITS = 65536  # dense units (and a searched integer's max)
MAX_BATCH = 65536  # images per step: the whole training split of CIFAR-10 is 50,000
MAX_EPOCHS = 10_000
MAX_TIMEOUT = 3600.0  # seconds one network read may wait
MAX_DEADLINE = 7 * 24 * 3600.0  # seconds: a week


def F(description: str) -> Any:
    """A required field (params.yaml gives every value) with its one-line description."""
    return Field(description=description)


def within(interval: str, says: str | None = None) -> Any:
    """Both bounds of "[0, 1)"-style `interval`; a value outside is told as that interval (or
    as `says`) rather than as the one bound it crossed."""
    low, high = (float(v) if "." in v else int(v) for v in interval[1:-1].split(", "))
    low_key, high_key = "gt" if interval[0] == "(" else "ge", "lt" if interval[-1] == ")" else "le"
    extra = {"within": says or f"in {interval}"}
    return Field(json_schema_extra=extra, **{low_key: low, high_key: high})


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Count = Annotated[int, Field(ge=1, le=MAX_SEED)]
Filters = Annotated[int, Field(ge=1, le=MAX_FILTERS)]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, within("[0, 1)")]
Confidence = Annotated[float, within("[0.5, 1)", "at least 0.5 and below 1")]
Name = Annotated[str, AfterValidator(checks.valid_name)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
