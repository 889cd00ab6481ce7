"""Changes to params.yaml given as `KEY=VALUE` overrides, as `dvc exp run -S` takes them: the
retrain flow's `--set` and `epochs`, and `publish-data`'s dataset source."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from cifar10_mlops.core.settings import PARAMS_FILE, params_from_dict
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.files import replacing


# What a flow run's parameters may not change, whoever starts the run: where the data comes
# from (it comes from the committed params.yaml or `publish-data`) and how a new model is
# judged for promotion (a run could otherwise train on anyone's data and lower the bar).
FLOW_LOCKED = ("download", "register")


def apply_params(
    overrides: list[str], params: Path = PARAMS_FILE, locked: tuple[str, ...] = ()
) -> None:
    """Write `key=value` overrides into params.yaml as `dvc exp run -S` does (same grammar),
    so that dvc.lock records them. Each must set a key params.yaml has, to a value of the type
    and range the config expects, else params.yaml is not touched; the new file replaces it in
    one step, so a stage reading it meanwhile never sees a half-written one. Keys in the
    sections `locked` are refused."""
    from dvc.utils.hydra import apply_overrides

    check_overrides(overrides, yaml.safe_load(params.read_text()), locked)
    bad = f"bad parameter override {' '.join(overrides)}"
    with replacing(params) as new:
        shutil.copy(params, new)  # its mode too
        try:
            apply_overrides(str(new), overrides)
            params_from_dict(yaml.safe_load(new.read_text()))
        except ConfigError as exc:
            raise PipelineError(f"{bad}: {params}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0]  # DVC wraps Hydra's reason
            raise PipelineError(f"{bad}: {cause}") from None


def check_overrides(overrides: list[str], params: dict, locked: tuple[str, ...] = ()) -> None:
    """Refuse an override that adds (`+key=`, `++key=`) or deletes (`~key`) a key, names one
    that params.yaml does not have or one in a `locked` section, or sweeps values: a flow
    parameter, which anyone allowed to start a run can set, changes values only."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    try:
        parsed = to_hydra_overrides(overrides)
    except OverrideParseException as exc:
        reason = str(exc).splitlines()[0]
        raise PipelineError(f"bad parameter override {' '.join(overrides)}: {reason}") from None
    for override in parsed:
        bad = f"bad parameter override {override.input_line}"
        if override.type is not OverrideType.CHANGE:
            raise PipelineError(
                f"{bad}: params.yaml's keys can be set (KEY=VALUE), not added (+KEY=, ++KEY=) "
                "or deleted (~KEY)"
            )
        if override.is_sweep_override():
            raise PipelineError(f"{bad}: one value per key")
        if "${" in override.input_line:  # ${oc.env:...} would copy the environment into params
            raise PipelineError(f"{bad}: interpolations (${{...}}) are not allowed, only values")
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if key.split(".")[0] in locked:
            raise PipelineError(
                f"{bad}: a run's parameters cannot change {key.split('.')[0]}.*: data comes "
                "from the committed params.yaml or `publish-data`, promotion rules from "
                "params.yaml as committed"
            )
        node, at = params, None
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(node) if isinstance(node, dict) else "a value, no keys"
                raise PipelineError(
                    f"{bad}: params.yaml has no {key} ({at or 'top level'}: {known})"
                )
            node, at = node[part], part if at is None else f"{at}.{part}"


def apply_flow_params(epochs: int | None, set_params: list[str] | None) -> None:
    """The retrain flow's `set_params` and `epochs` (train.epochs) into params.yaml, all of
    them or, when one is refused, none."""
    overrides = [*(set_params or []), *([f"train.epochs={epochs}"] if epochs is not None else [])]
    if overrides:
        apply_params(overrides, locked=FLOW_LOCKED)
