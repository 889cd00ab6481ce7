"""`make screenshots` (cifar10_mlops.ops.screenshots): the MLflow UI's and `dvc plots`' pages
of a reproduced pipeline, shot with headless Chromium. Without Chromium the integration test
skips, unless CIFAR10_REQUIRE_CHROMIUM=1 (as .ci/run sets)."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops import screenshots

PAGES = ["runs-leaderboard", "runs-overview", "runs-charts", "run", "run-metrics",
         "logged-model", "registered-model", "model-version", "dvc-plots"]  # fmt: skip


def test_a_missing_chromium_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "chromium"))
    with pytest.raises(PipelineError, match=r"CHROMIUM=.*chromium is not an executable file"):
        screenshots.main(["--out", str(tmp_path / "shots")])
    assert not (tmp_path / "shots").exists()


def test_a_project_that_never_ran_says_to_run_the_pipeline(monkeypatch, tmp_path):
    monkeypatch.setenv("CHROMIUM", sys.executable)  # an executable: the check comes later
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"models/run.json: .*run `make repro` first"):
        screenshots.main([])
    assert not (tmp_path / "screenshots").exists()


def chromium_or_skip() -> None:
    if shutil.which("chromium") or shutil.which("chromium-browser") or os.environ.get("CHROMIUM"):
        return
    if os.environ.get("CIFAR10_REQUIRE_CHROMIUM") == "1":
        pytest.fail("Chromium is required here (CIFAR10_REQUIRE_CHROMIUM=1)")
    pytest.skip("no Chromium: apt install chromium")


@pytest.mark.integration
@pytest.mark.extended
@pytest.mark.long(seconds=150)
def test_every_page_a_user_opens_is_shot_and_not_blank(reproduced, tmp_path):
    chromium_or_skip()
    plots = tmp_path / "plots"
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--out", str(plots)],
                   cwd=reproduced, check=True, capture_output=True)  # fmt: skip
    out = tmp_path / "shots"
    result = subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.ops.screenshots", "--out", str(out),
         "--plots", str(plots / "index.html")],
        cwd=reproduced, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for page in PAGES:
        with Image.open(out / f"{page}.png") as image:
            assert image.width == screenshots.WIDTH and image.height >= 700, page
            assert image.convert("RGB").getcolors(maxcolors=screenshots.BLANK) is None, page
    assert not list(out.glob("*.partial.png"))
