import subprocess
import sys

from cifar10_mlops.core.settings import flatten, load_params
from cifar10_mlops.ops.settings_reference import PAGE, render
from conftest import REPO


def test_the_settings_page_is_current_and_lists_every_key():
    text = (REPO / PAGE).read_text()
    params = load_params(REPO / "params.yaml")
    assert text == render(params), "run make settings-doc"
    keys = [k for k in flatten(params) if not k.startswith("tune.space.")]
    keys += [f"tune.space.{k}" for k in type(params.tune.space).model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing
    assert "| `train.dropout` | float | in [0, 1) | `0.0` | dropout rate" in text
    assert "| `train.conv_1_filters` | int | ≥ 1, ≤ 4096 | `32` |" in text


def test_check_fails_on_a_stale_page(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / PAGE).write_text("# an old page\n")
    cmd = [sys.executable, "-m", "cifar10_mlops.ops.settings_reference", "--check"]
    stale = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr.strip() == (
        "error: docs/settings.md is out of date: run make settings-doc"
    )
    subprocess.run(cmd[:-1], cwd=tmp_path, check=True, capture_output=True)
    assert subprocess.run(cmd, cwd=tmp_path).returncode == 0
    assert (tmp_path / PAGE).read_text() == (REPO / PAGE).read_text()
