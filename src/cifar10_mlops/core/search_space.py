"""What `tune.space` may say: a range (or list of choices) per `train` value the search may
replace, each within the bounds `train` itself accepts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from cifar10_mlops.core import validation as checks
from cifar10_mlops.core.fields import OPTIMIZERS, Count, F, Filters, Positive, Section
from cifar10_mlops.core.validation import KeyedError
from cifar10_mlops.core.fields import MAX_UNITS


def ordered(low: float, high: float) -> None:
    """A search range's min below its max."""
    if low > high:
        raise KeyedError("", f"inverted range, min {low} > max {high}")
    if low == high:
        hint = "set the entry to null to keep the train value"
        raise KeyedError("", f"empty range, min == max == {low} ({hint})")


class IntRange(Section):
    """Integers min, min + step, ... up to max (keras_tuner.HyperParameters.Int)."""

    min: Count = F("the smallest value")
    max: Annotated[int, Field(ge=1, le=MAX_UNITS)] = F("the largest value")
    step: Count = F("the spacing of the values, at most max - min")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        ordered(self.min, self.max)
        if self.step > self.max - self.min:
            most = f"max - min = {self.max - self.min}"
            raise KeyedError("step", f"must be in [1, {most}], got {self.step}")
        return self


class FloatRange(Section):
    """Floats in [min, max], sampled uniformly or log-uniformly (HyperParameters.Float)."""

    min: Positive = F("the smallest value")
    max: float = F("the largest value")
    sampling: Literal["linear", "log"] = F("linear: uniform | log: log-uniform")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        ordered(self.min, self.max)
        return self


class FilterRange(IntRange):
    """Conv filters to search, at most 4096 (MAX_FILTERS) as train's own."""

    max: Filters = F("the largest value")


class FractionRange(FloatRange):
    """A rate below 1 to search, as train's own."""

    max: Annotated[float, Field(lt=1)] = F("the largest value, below 1")


class OptimizerChoice(Section):
    """Optimizer names to choose from (HyperParameters.Choice)."""

    values: Annotated[list[str], AfterValidator(checks.valid_optimizers(OPTIMIZERS))] = F(
        "names to try"
    )


class SearchSpace(Section):
    """What Hyperband searches; a null entry is not searched and keeps its `train` value.
    Each range stays within train's own bounds: a search must not end in values train refuses.
    """

    conv_1_filters: FilterRange | None = F("train.conv_1_filters' range")
    conv_2_filters: FilterRange | None = F("train.conv_2_filters' range")
    conv_3_filters: FilterRange | None = F("train.conv_3_filters' range")
    dense_units: IntRange | None = F("train.dense_units' range")
    learning_rate: FloatRange | None = F("train.learning_rate's range")
    muon_learning_rate: FloatRange | None = F("train.muon_learning_rate's range")
    weight_decay: FractionRange | None = F("train.weight_decay's range")
    label_smoothing: FractionRange | None = F("train.label_smoothing's range")
    optimizer: OptimizerChoice | None = F("train.optimizer's choices")

    @model_validator(mode="after")
    def _runnable(self) -> SearchSpace:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise KeyedError("", "every entry is null; nothing to search")
        return self


# The `train` values a search may replace: one entry of `tune.space` each.
TUNABLE: tuple[str, ...] = tuple(SearchSpace.model_fields)
