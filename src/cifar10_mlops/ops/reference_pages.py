"""The docs pages generated from the code, so that they cannot drift from it.

    make reference-pages                                     # rewrite both pages
    python -m cifar10_mlops.ops.reference_pages --check      # exit 1 when one is out of date

- docs/settings.md: one table per params.yaml section, each key's type, allowed values, the
  value params.yaml gives it and its one-line description (core/settings.py);
- docs/modules.md: the package's layout, a line per module from its docstring.

A test keeps both current.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cifar10_mlops.core.validation import field_infos
from cifar10_mlops.core.settings import (
    PARAMS_FILE,
    FilterRange,
    FloatRange,
    FractionRange,
    IntRange,
    OptimizerChoice,
    Params,
    load_params,
)

PAGE = Path("docs/settings.md")
MODULES_PAGE = Path("docs/modules.md")
PACKAGE = Path(__file__).resolve().parents[1]  # src/cifar10_mlops
RANGE_TABLE = "| key | type | allowed | meaning |\n|---|---|---|---|"
SIGNS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
HEADER = """# Settings reference

Every key of `params.yaml`, generated from the settings models
(`src/cifar10_mlops/core/settings.py`) by `make reference-pages`: edit the descriptions there,
not here. Every key is required; a stage refuses an unknown key, a wrong type or a value out
of range in one line naming the key. Change a value for one run with
`dvc exp run -S key=value`.
"""


def type_name(annotation: Any) -> str:
    """`int`, `float or null`, `one of a, b`, or a section's name."""
    options = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        names = [type_name(o) for o in options if o is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in options else "")
    if typing.get_origin(annotation) is typing.Annotated:
        return type_name(options[0])
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{o}`" for o in options)
    if typing.get_origin(annotation) is list:
        return f"list of {type_name(options[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#search-ranges)"
    return getattr(annotation, "__name__", str(annotation))


def bounds(info: FieldInfo) -> str:
    """What a key's value may be beyond its type: "in [0, 1)", "≥ 1, ≤ 4096" or nothing."""
    infos = field_infos(info)
    said = [i.json_schema_extra["within"] for i in infos if isinstance(i.json_schema_extra, dict)]
    if said:
        return said[0]
    limits = [f"{SIGNS[k]} {getattr(m, k)}" for i in infos for m in i.metadata for k in SIGNS
              if hasattr(m, k)]  # fmt: skip
    return ", ".join(limits)


def shown(value: Any) -> str:
    """A value as params.yaml writes it."""
    if value is None:
        return "null"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return f"`{yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()}`".replace(
        "\n...", ""
    )


def row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def rows(model: type[BaseModel], values: BaseModel, prefix: str) -> list[str]:
    """A table row per key; a nested section (train.augment, tune.space) adds its own keys."""
    lines = []
    for name, info in model.model_fields.items():
        value, key = getattr(values, name), f"{prefix}{name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            lines += rows(info.annotation, value, f"{key}.")
            continue
        cells = [
            f"`{key}`",
            type_name(info.annotation),
            bounds(info),
            shown(value),
            info.description,
        ]
        lines.append(row(cells))
    return lines


def render(params: Params) -> str:
    """The page: the top-level keys, then a table per section."""
    table = "| key | type | allowed | params.yaml | meaning |\n|---|---|---|---|---|"
    sections = {
        n: i for n, i in Params.model_fields.items() if isinstance(getattr(params, n), BaseModel)
    }
    top = [row for row in rows(Params, params, "") if row.split("`")[1] in Params.model_fields]
    parts = [HEADER, "## top level\n", table, *top]
    for name, info in sections.items():
        value = getattr(params, name)
        parts += [f"\n## {name}\n", f"{info.description}.\n", table]
        parts += rows(type(value), value, f"{name}.")
    parts += [
        "\n## Search ranges\n",
        "Each entry of `tune.space` is null (not searched) or one of these.\n",
    ]
    for model in (IntRange, FilterRange, FloatRange, FractionRange, OptimizerChoice):
        parts += [f"\n### {model.__name__}\n", f"{inspect.getdoc(model)}\n", RANGE_TABLE]
        parts += [row([f"`{k}`", type_name(i.annotation), bounds(i), i.description])
                  for k, i in model.model_fields.items()]  # fmt: skip
    return "\n".join(parts) + "\n"


ROOMS = {
    "stages": "One module per stage of dvc.yaml, named like it, run as `python -m` it.",
    "stages/tune": "The `tune` stage, a package: the search, its hypermodel, oracle and records.",
    "training": "The ML code `train` and `tune` share; neither stage imports the other.",
    "serving": "A registered model in use.",
    "monitoring": "Whether what the served model is asked still looks like its reference.",
    "ops": "Commands around the pipeline.",
    "core": "Plumbing every part uses.",
}
MODULES_HEADER = """# Modules

The package `src/cifar10_mlops/`, grouped by role, a line per module from its docstring
(generated by `make reference-pages`). The flows are in `flows/`, the tests in `tests/`
(`test_<module>.py`), the benchmarks in `benchmarks/`.
"""


def summary(path: Path) -> str:
    """A module docstring's first paragraph, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def render_modules(package: Path = PACKAGE) -> str:
    parts = [MODULES_HEADER, "| module | what it holds |\n|---|---|"]
    parts += [
        row([f"`{p.name}`", summary(p)])
        for p in sorted(package.glob("*.py"))
        if p.stem != "__init__"
    ]
    for room, about in ROOMS.items():
        parts += [f"\n## {room}/\n", f"{about}\n", "| module | what it holds |\n|---|---|"]
        files = sorted(p for p in (package / room).glob("*.py") if p.name != "__init__.py")
        parts += [row([f"`{p.name}`", summary(p)]) for p in files]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a page is stale")
    args = parser.parse_args(argv)
    pages = {PAGE: render(load_params(PARAMS_FILE)), MODULES_PAGE: render_modules()}
    if args.check:
        stale = [str(p) for p, text in pages.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(
                f"error: {', '.join(stale)} out of date: run make reference-pages", file=sys.stderr
            )
            return 1
        return 0
    for page, text in pages.items():
        page.parent.mkdir(exist_ok=True)
        page.write_text(text)
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
