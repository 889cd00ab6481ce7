import subprocess
import sys

from cifar10_mlops.core.settings import flatten, load_params
from cifar10_mlops.ops.reference_pages import MODULES_PAGE, PACKAGE, PAGE, render, render_modules
from helpers import REPO

CMD = [sys.executable, "-m", "cifar10_mlops.ops.reference_pages"]


def test_the_settings_page_is_current_and_lists_every_key():
    text = (REPO / PAGE).read_text()
    params = load_params(REPO / "params.yaml")
    assert text == render(params), "run make reference-pages"
    keys = [k for k in flatten(params) if not k.startswith("tune.space.")]
    keys += [f"tune.space.{k}" for k in type(params.tune.space).model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing
    assert "| `train.dropout` | float | in [0, 1) | `0.0` | dropout rate" in text
    assert "| `train.conv_1_filters` | int | ≥ 1, ≤ 4096 | `32` |" in text


def test_the_modules_page_is_current_and_names_every_module_under_its_room():
    text = (REPO / MODULES_PAGE).read_text()
    assert text == render_modules(), "run make reference-pages"
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    assert len(modules) > 40
    for path in modules:
        room = path.parent.relative_to(PACKAGE).as_posix()
        section = text.split(f"## {room}/")[1].split("\n## ")[0] if room != "." else text
        assert f"| `{path.name}` |" in section, path
    assert "| `train.py` | Stage `train`: fit the CNN" in text.split("## stages/")[1]


def test_check_fails_on_a_stale_page(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / PAGE).write_text("# an old page\n")
    stale = subprocess.run([*CMD, "--check"], cwd=tmp_path, capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr.strip() == (
        "error: docs/settings.md, docs/modules.md out of date: run make reference-pages"
    )
    subprocess.run(CMD, cwd=tmp_path, check=True, capture_output=True)
    assert subprocess.run([*CMD, "--check"], cwd=tmp_path).returncode == 0
    assert (tmp_path / PAGE).read_text() == (REPO / PAGE).read_text()
    assert (tmp_path / MODULES_PAGE).read_text() == (REPO / MODULES_PAGE).read_text()
