"""dvc.yaml's stages list exactly the code and the params the stage modules read."""

import ast
from pathlib import Path

import pytest
import yaml

from cifar10_mlops.core.settings import TUNABLE
from cifar10_mlops.stages.tune.space import TRAIN_KEYS
from helpers import REPO

PACKAGE = REPO / "src" / "cifar10_mlops"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
UNITS = ("stages.tune",)  # packages a stage depends on as a whole folder


def source(module: str) -> Path:
    """A module of the package ("core.settings", "stages.tune"): a .py file or a folder."""
    path = PACKAGE.joinpath(*module.split("."))
    return path if path.is_dir() else path.with_suffix(".py")


def unit(module: str) -> str:
    return next((u for u in UNITS if module == u or module.startswith(f"{u}.")), module)


def imported(module: str) -> set[str]:
    """The package's modules that `module` imports, at any depth of its code."""
    path = source(module)
    found = set()
    for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar10_mlops"):
                sub = node.module.removeprefix("cifar10_mlops").lstrip(".")
                for alias in node.names:  # a module (from core import tracking) or a name in one
                    named = f"{sub}.{alias.name}".lstrip(".")
                    found.add(unit(named if source(named).exists() else sub))
    return found - {module}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported(module))
    return seen


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage):
    code = {d for d in STAGES[stage]["deps"] if d.startswith("src/")}
    expected = {str(source(m).relative_to(REPO)) for m in closure(f"stages.{stage}")}
    assert code == expected


def test_each_stage_is_the_module_named_like_it():
    for stage, spec in STAGES.items():
        assert spec["cmd"].startswith(f"python -m cifar10_mlops.stages.{stage} ")
        assert source(f"stages.{stage}").exists()


def test_package_folders_hold_no_code_that_stages_would_miss():
    # Stages depend on modules, not on the __init__.py of the folders they sit in: those hold
    # a docstring only, so editing one can change no stage's output.
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent.relative_to(PACKAGE).as_posix().replace("/", ".") in UNITS:
            continue
        body = ast.parse(init.read_text()).body
        assert len(body) <= 1 and all(isinstance(n, ast.Expr) for n in body), init


def test_train_and_tune_share_the_training_code_and_never_import_each_other():
    tune, train = closure("stages.tune"), closure("stages.train")
    assert "stages.train" not in tune and "stages.tune" not in train
    assert {"training.network", "training.data", "training.optimizers"} <= tune & train


def test_tune_depends_on_exactly_the_params_it_reads():
    train_keys = {f"train.{k}" for k in TRAIN_KEYS + TUNABLE}
    assert set(STAGES["tune"]["params"]) == {
        "seed", "deterministic", "tune", "mlflow", *train_keys
    }  # fmt: skip
