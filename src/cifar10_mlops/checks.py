"""The value checks params.yaml's dataclasses (config.py) use: ranges, names, cron
expressions, checksums, and a YAML loader that refuses a key given twice. Each failure is a
ConfigError naming the dotted key."""

from __future__ import annotations

import re

import yaml

from cifar10_mlops.errors import ConfigError

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


def check_name(section: str, name: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"{join(section, name)}: {value!r} is not a name: use letters, digits, '.', '_' "
            "and '-' (at most 128, starting with a letter or digit)"
        )


def check_cron(value: str, key: str) -> None:
    """A 5-field cron expression whose every value is in its field's range."""
    fields = value.split()
    if len(fields) != 5:
        raise ConfigError(
            f"{key}: expected 5 fields (minute hour day month weekday), got {value!r}"
        )
    for text, (field, low, high) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(field, [])
        for item in text.split(","):
            if not _cron_item_ok(item.lower(), low, high, names, field == "month"):
                raise ConfigError(
                    f"{key}: {field} {item!r} in {value!r} is not valid (values {low}-{high}"
                    + (f" or {names[0]}-{names[-1]}" if names else "")
                    + ")"
                )


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


def check_checksum(value: str, key: str) -> None:
    """A checksum is 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'."""
    algo, _, digest = value.partition(":")
    lengths = {"md5": 32, "sha256": 64}
    if algo not in lengths or len(digest) != lengths[algo] or not _is_hex(digest):
        raise ConfigError(f"{key}: expected 'md5:<32 hex>' or 'sha256:<64 hex>', got {value!r}")


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


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def at_least(section: str, name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{join(section, name)}: must be >= {low}, got {value}")


def between(
    section: str, name: str, value: float, low: float, high: float, *, low_open: bool = False
) -> None:
    """`value` in [low, high] ((low, high] with low_open), or a ConfigError naming the key."""
    where = join(section, name)
    if value < low or (low_open and value == low):
        raise ConfigError(f"{where}: must be {'>' if low_open else '>='} {low}, got {value}")
    if value > high:
        raise ConfigError(f"{where}: must be <= {high}, got {value}")


def span(key: str, low: float, high: float) -> None:
    if low > high:
        raise ConfigError(f"{key}: inverted range, min {low} > max {high}")
    if low == high:
        raise ConfigError(
            f"{key}: empty range, min == max == {low} (set the entry to null to keep "
            "the train value)"
        )


def positive(section: str, name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{join(section, name)}: must be > 0, got {value}")
