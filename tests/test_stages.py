"""dvc.yaml's stages list exactly the code and the params the stage modules read."""

import ast
from pathlib import Path

import pytest
import yaml

from cifar10_mlops.settings import TUNABLE
from cifar10_mlops.tune.space import TRAIN_KEYS
from conftest import REPO

PACKAGE = REPO / "src" / "cifar10_mlops"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def source(name: str) -> Path:
    """A module of the package: a .py file or a package folder."""
    return PACKAGE / name if (PACKAGE / name).is_dir() else PACKAGE / f"{name}.py"


def imported(name: str) -> set[str]:
    """The package's modules that module `name` imports, at any depth of its code."""
    path = source(name)
    found = set()
    for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar10_mlops"):
                sub = node.module.removeprefix("cifar10_mlops").lstrip(".")
                found |= {sub.split(".")[0]} if sub else {a.name for a in node.names}
    return found - {name}


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported(module))
    return seen


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage):
    code = {d for d in STAGES[stage]["deps"] if d.startswith("src/")}
    expected = {str(source(m).relative_to(REPO)) for m in closure(stage)}
    assert code == expected


def test_train_and_tune_share_fit_and_never_import_each_other():
    assert "train" not in closure("tune") and "tune" not in closure("train")
    assert "fit" in closure("tune") & closure("train")


def test_tune_depends_on_exactly_the_params_it_reads():
    train_keys = {f"train.{k}" for k in TRAIN_KEYS + TUNABLE}
    assert set(STAGES["tune"]["params"]) == {
        "seed", "deterministic", "tune", "mlflow", *train_keys
    }  # fmt: skip
