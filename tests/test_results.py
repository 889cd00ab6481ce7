"""README's results block and docs/results.md (cifar10_mlops.ops.results): generated from the
run records, and current."""

import re
import shutil

import pytest
import yaml

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.results import END, NO_RUN, START, render, spread
from cifar10_mlops.ops.runs import params_digest, write_record
from helpers import REPO


def test_readme_and_the_results_page_are_what_the_records_render():
    for path, text in render(REPO).items():
        assert path.read_text() == text, f"{path.name} is stale: run `make results`"


def test_readme_shows_each_recipe_with_its_spread_time_and_hardware():
    """The defaults always have a recorded run (a change to them comes with one); the other
    recipes show theirs, or say that none was recorded at today's params."""
    block = (REPO / "README.md").read_text().split(START)[1].split(END)[0]
    rows = [line for line in block.splitlines() if line.startswith("| `make ")]
    recipes = list(dict.fromkeys(row.split("`")[1] for row in rows))  # a row per machine kind
    assert recipes == ["make repro", "make airbench", "make study"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if row.startswith("| `make repro`") or cells[1] != NO_RUN:
            assert re.fullmatch(r"\*\*0\.\d{4}( ± 0\.\d{4})?\*\*", cells[1]), row
            assert " min" in cells[4] and "-core " in cells[5], row


@pytest.fixture
def checkout(tmp_path):
    """The files the results are rendered from, in a scratch folder."""
    (tmp_path / "docs").mkdir()
    for name in ("README.md", "Makefile", "params.yaml", "docs/index.md"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "reports" / "runs").mkdir(parents=True)
    return tmp_path


def add_run(folder, accuracy: float, seed: int, config: str = "repro", **fields) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    write_record({"config": config, "date": f"2026-12-0{seed % 9 + 1}T10:00:00Z",
                  "seed": seed, "params_digest": params_digest(params),
                  "hardware": {"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "cores": 2, "gpus": []},
                  "stages": {"train": 600.0}, "wall_seconds": 900.0,
                  "test": {"accuracy": accuracy, "f1_weighted": accuracy - 0.001}, **fields},
                 folder / "reports" / "runs")  # fmt: skip


def repro_row(rendered: dict, folder) -> str:
    block = rendered[folder / "README.md"].split(START)[1].split(END)[0]
    [row] = [r for r in block.splitlines() if r.startswith("| `make repro`")]
    return row


def test_a_changed_default_empties_its_row_and_keeps_the_runs_in_the_history(checkout):
    add_run(checkout, 0.9006, 42)
    add_run(checkout, 0.9020, 43)
    add_run(checkout, 0.9002, 44)
    row = repro_row(render(checkout), checkout)
    assert "**0.9009 ± 0.0009**" in row and "3 (seeds 42, 43, 44)" in row
    assert "| 10.0 / 15.0 min |" in row and "| 2-core Intel Xeon, no GPU |" in row

    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["train"]["epochs"] += 1
    (checkout / "params.yaml").write_text(yaml.safe_dump(params))
    rendered = render(checkout)
    assert "no run recorded at today's params" in repro_row(rendered, checkout)
    history = rendered[checkout / "docs" / "results.md"]
    assert history.count("| `repro` |") == 3 and "| ✓ |" not in history

    params["retrain"]["cron"] = "0 1 * * *"  # where and when it runs: the same recipe
    params["train"]["epochs"] -= 1
    (checkout / "params.yaml").write_text(yaml.safe_dump(params))
    assert "**0.9009 ± 0.0009**" in repro_row(render(checkout), checkout)


def test_a_backfilled_run_says_where_its_figures_come_from(checkout):
    add_run(checkout, 0.8015, 1, config="study", backfilled="the study's reported figure")
    page = render(checkout)[checkout / "docs" / "results.md"]
    assert "| `study` (backfilled) |" in page
    assert "the study's reported figure" in page


def test_a_readme_without_its_markers_is_a_one_line_error(checkout):
    readme = checkout / "README.md"
    readme.write_text(readme.read_text().replace(START, ""))
    with pytest.raises(PipelineError, match="README.md: needs one <!-- results: start"):
        render(checkout)


def test_spread_is_the_mean_and_sample_standard_deviation():
    assert spread([0.9006, 0.9020, 0.9002]) == "0.9009 ± 0.0009"
    assert spread([0.9]) == "0.9000"


def test_each_kind_of_machine_gets_its_own_row(checkout):
    """The same seed trains other weights on another CPU, and minutes only compare on one
    machine: runs on two CPUs are two rows, neither averaged into the other."""
    add_run(checkout, 0.9006, 42)
    add_run(checkout, 0.9020, 43)
    amd = {"cpu": "AMD EPYC 7B13", "cores": 2, "gpus": []}
    add_run(checkout, 0.9019, 42, hardware=amd, stages={"train": 1200.0}, wall_seconds=1500.0)
    block = render(checkout)[checkout / "README.md"].split(START)[1].split(END)[0]
    rows = [r for r in block.splitlines() if r.startswith("| `make repro`")]
    assert len(rows) == 2
    assert "**0.9013 ± 0.0010**" in rows[0] and "| 2-core Intel Xeon, no GPU |" in rows[0]
    assert (
        "**0.9019**" in rows[1] and "| 20.0 / 25.0 min | 2-core AMD EPYC 7B13, no GPU |" in rows[1]
    )
