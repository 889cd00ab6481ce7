"""The checks params.yaml's settings (settings.py) use beyond pydantic's types and bounds:
names, cron expressions, checksums, time zones, a YAML loader that refuses a key given twice,
and `explain`, which turns a pydantic ValidationError into one line naming the dotted key."""

from __future__ import annotations

import re
import typing
import zoneinfo
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from cifar10_mlops.core.errors import ConfigError

# A registered model's or a deployment's name appears in URIs (models:/<name>@champion) and
# commands: letters, digits and . _ - only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Standard cron: each of the 5 fields a list of *, N or N-N, optionally /step; names allowed
# for months and weekdays.
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12),
                ("weekday", 0, 7))  # fmt: skip
_CRON_NAMES = {
    "month": "jan feb mar apr may jun jul aug sep oct nov dec".split(),
    "weekday": "sun mon tue wed thu fri sat".split(),
}
_CRON_ITEM = re.compile(r"(\*|([0-9]{1,2}|[a-z]{3})(?:-([0-9]{1,2}|[a-z]{3}))?)(?:/([0-9]{1,2}))?")


def valid_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a name: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit)"
        )
    return value


def checked(key: str, valid: Callable[[str], str], value: str) -> str:
    """`valid(value)` for a value given outside params.yaml (a command-line option, an
    environment variable): its ValueError becomes a ConfigError naming `key`."""
    try:
        return valid(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def valid_cron(value: str) -> str:
    """A 5-field cron expression whose every value is in its field's range."""
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {value!r}")
    for text, (field, low, high) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(field, [])
        for item in text.split(","):
            if not _cron_item_ok(item.lower(), low, high, names, field == "month"):
                raise ValueError(
                    f"{field} {item!r} in {value!r} is not valid (values {low}-{high}"
                    + (f" or {names[0]}-{names[-1]}" if names else "")
                    + ")"
                )
    return value


def _cron_item_ok(item: str, low: int, high: int, names: list[str], one_based: bool) -> bool:
    """`*`, `N`, `N-M` (N <= M) or a name, optionally `/step` with step >= 1."""
    found = _CRON_ITEM.fullmatch(item)
    if not found:
        return False
    ends = [v for v in found.groups()[1:3] if v]
    if any(not v.isascii() or (not v.isdigit() and v not in names) for v in ends):
        return False
    numbers = [int(v) if v.isdigit() else names.index(v) + one_based for v in ends]
    in_range = all(low <= n <= high for n in numbers) and numbers == sorted(numbers)
    return in_range and (found[4] is None or int(found[4]) >= 1)


def valid_checksum(value: str) -> str:
    """A checksum is 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'."""
    algo, _, digest = value.partition(":")
    lengths = {"md5": 32, "sha256": 64}
    if algo not in lengths or len(digest) != lengths[algo] or not _is_hex(digest):
        raise ValueError(f"expected 'md5:<32 hex>' or 'sha256:<64 hex>', got {value!r}")
    return value


def valid_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a folder
        raise ValueError(
            f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Paris)"
        ) from None
    return value


def valid_nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def valid_optimizers(known: tuple[str, ...]) -> Callable[[list[str]], list[str]]:
    """A check that a list names each of `known` at most once and nothing else."""

    def check(values: list[str]) -> list[str]:
        if not values:
            raise ValueError(f"empty; list at least one of {', '.join(known)}")
        for name in values:
            if name not in known:
                raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(known)}")
        if len(set(values)) != len(values):
            raise ValueError(f"lists an optimizer twice: {values}")
        return values

    return check


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last
    one silently; DVC refuses the file)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged, not a key
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ConfigError(f"a key that is a {type(key).__name__} (line {line})")
            if key in seen:
                raise ConfigError(f"key {key!r} given twice (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep)


class KeyedError(ValueError):
    """A check across fields, raised in a model validator: `key` (dotted, relative to the
    model; "" for the model itself) names the field at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# pydantic's error types -> the type names a params.yaml author knows
_TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
          "list_type": "list"}  # fmt: skip
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}  # fmt: skip


def explain(exc: ValidationError, model: type[BaseModel], key: str = "") -> str:
    """The first problem of a ValidationError, in one line naming the dotted key: unknown keys
    first (all of one mapping's at once), then the others in the order of the fields."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        parent = unknown[0]["loc"][:-1]
        names = [_dotted(key, e["loc"]) for e in unknown if e["loc"][:-1] == parent]
        known = ", ".join(sorted(_model_at(model, parent).model_fields))
        return f"unknown key {', '.join(names)} (known: {known})"
    missing = [e for e in errors if e["type"] == "missing"]
    error = (missing or errors)[0]
    where, kind, value = _dotted(key, error["loc"]), error["type"], error["input"]
    field = _field_at(model, error["loc"])
    if kind == "missing":
        return f"missing key {where}"
    if kind in _TYPES:
        return f"{where}: expected {_TYPES[kind]}, got {type(value).__name__} {_shown(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where or 'top level'}: expected a mapping, got {type(value).__name__}"
    if kind == "literal_error":
        choices = ", ".join(map(str, typing.get_args(field.annotation)))
        return f"{where}: must be one of {choices}; got {_shown(value)}"
    if kind == "finite_number":
        return f"{where}: must be a finite number, got {_shown(value)}"
    if kind in _BOUNDS:
        infos = field_infos(field) if field else []
        within = next((i.json_schema_extra["within"] for i in infos if _has_within(i)), None)
        if within:
            return f"{where}: must be {within}, got {_shown(value)}"
        name, sign = _BOUNDS[kind]
        limit = error["ctx"][name]  # a float for float fields: the declared constant reads better
        declared = (getattr(m, name) for i in infos for m in i.metadata if hasattr(m, name))
        bound = next((b for b in declared if b == limit), limit)
        return f"{where}: must be {sign} {bound}, got {_shown(value)}"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        return f"{_dotted(where, cause.key.split('.') if cause.key else ())}: {cause}"
    return f"{where}: {cause if cause is not None else error['msg']}"


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut short: a value can be a file's worth of text."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _dotted(prefix: str, loc: tuple | list) -> str:
    parts = [prefix] if prefix else []
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    for part in loc:
        model = _submodel(model.model_fields[part].annotation)
    return model


def _field_at(model: type[BaseModel] | None, loc: tuple) -> FieldInfo | None:
    """The field a ValidationError location points at (list indexes skipped)."""
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = _submodel(field.annotation)
    return field


def field_infos(field: FieldInfo) -> list[FieldInfo]:
    """A field and the FieldInfos inside its annotation (`Count | None` keeps Count's bounds
    there rather than on the field)."""
    infos, todo = [field], [field.annotation]
    while todo:
        annotation = todo.pop()
        infos += [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, FieldInfo)]
        todo += typing.get_args(annotation)
    return infos


def _has_within(info: FieldInfo) -> bool:
    return isinstance(info.json_schema_extra, dict) and "within" in info.json_schema_extra


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for option in (annotation, *typing.get_args(annotation)):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None
