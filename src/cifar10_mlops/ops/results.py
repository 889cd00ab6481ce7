"""README's results block and docs/results.md, rendered from the run records of reports/runs/
(`cifar10_mlops.ops.runs`).

    python -m cifar10_mlops.ops.results           # rewrite both (`make results`)
    python -m cifar10_mlops.ops.results --check   # exit 1 when either differs from its records

A recipe's row counts only the records whose params digest is today's: params.yaml with the
recipe's `-S` overrides as the Makefile states them now. A changed default empties its row
until a run at the new values is recorded; the older runs stay in docs/results.md.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import write_atomic
from cifar10_mlops.core.settings import PARAMS_FILE
from cifar10_mlops.ops.runs import (
    RUNS_DIR,
    effective_params,
    load_records,
    overrides_of,
    params_digest,
)

README = Path("README.md")
# The pages that show today's recipes between the markers: the repository's and the site's
# front doors.
FRONT_PAGES = (README, Path("docs/index.md"))
RESULTS_PAGE = Path("docs/results.md")
START, END = "<!-- results: start (make results) -->", "<!-- results: end -->"
# The recipes of README's table: their make target, as the records name them.
README_RECIPES = ("repro", "airbench", "study")
RECIPES = (*README_RECIPES, "airbench-muon", "tune-full", "tune-study", "bench")
HEADER = (
    "| recipe | test accuracy | weighted F1 | runs | time: `train` / whole | hardware |\n"
    "|---|---|---|---|---|---|"
)
NO_RUN = "no run recorded at today's params"


def recipe_digest(recipe: str, makefile_dir: Path = Path(".")) -> str:
    """Today's params digest of `make <recipe>`: params.yaml and the target's -S overrides."""
    overrides: list[str] = []
    if recipe not in ("repro", "bench"):
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", recipe],
            cwd=makefile_dir, capture_output=True, text=True,
        )  # fmt: skip
        commands = [line for line in dry.stdout.splitlines() if " exp run " in line]
        if dry.returncode != 0 or not commands:
            raise PipelineError(f"make {recipe}: no `dvc exp run` command ({dry.stderr.strip()})")
        overrides = overrides_of(shlex.split(commands[-1]))
    return params_digest(effective_params(makefile_dir / PARAMS_FILE, overrides))


def spread(values: list[float]) -> str:
    """`mean ± sample standard deviation`, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def minutes(seconds: list[float | None]) -> str:
    """The median of the known durations in minutes; '—' when none is known."""
    known = [s for s in seconds if s is not None]
    return f"{statistics.median(known) / 60:.1f} min" if known else "—"


def number(value: float | None) -> str:
    """A metric to four places, '—' when the run did not measure it."""
    return "—" if value is None else f"{value:.4f}"


def machine(record: dict) -> str:
    """'2-core Intel Xeon, no GPU' from a record's hardware."""
    hardware = record.get("hardware") or {}
    cpu = re.sub(r"\((?:R|TM)\)|\b(?:CPU|Processor)\b|@.*$", "", hardware.get("cpu") or "unknown")
    gpus = ", ".join(hardware.get("gpus") or []) or "no GPU"
    return f"{hardware.get('cores', '?')}-core {' '.join(cpu.split())}, {gpus}"


def recipe_rows(recipe: str, records: list[dict], digest: str) -> list[str]:
    """The table rows of `recipe` at today's `digest`: one per kind of machine, since the same
    seed trains other weights on another CPU and times only compare on one machine."""
    name = f"`make {recipe}`"
    today = [r for r in records if r["config"] == recipe and r["params_digest"] == digest]
    if not today:
        return [f"| {name} | {NO_RUN} | | | | |"]
    counts = Counter(machine(r) for r in today)
    machines = sorted(counts, key=lambda m: (-counts[m], m))  # most runs first
    return [machine_row(name, [r for r in today if machine(r) == m], m) for m in machines]


def machine_row(name: str, today: list[dict], hardware: str) -> str:
    """One row: the records of one recipe on one kind of machine, summarised."""
    # One score per seed, its newest run's: a seed's runs repeat it bit for bit (or, with
    # `deterministic: false`, differ less than seeds do), so the spread is over seeds.
    by_seed = {r.get("seed"): r["test"] for r in today}
    accuracy = [test["accuracy"] for test in by_seed.values()]
    f1 = [test["f1_weighted"] for test in by_seed.values() if "f1_weighted" in test]
    seeds = ", ".join(map(str, sorted(by_seed, key=str)))
    runs = f"{len(today)} (seed{'s' * (len(by_seed) > 1)} {seeds})"
    train = minutes([(r.get("stages") or {}).get("train") for r in today])
    whole = minutes([r.get("wall_seconds") for r in today])
    mean_f1 = number(statistics.mean(f1)) if f1 else "—"
    return (
        f"| {name} | **{spread(accuracy)}** | {mean_f1} | {runs} "
        f"| {train.removesuffix(' min')} / {whole} | {hardware} |"
    )


def readme_block(records: list[dict], digests: dict[str, str]) -> str:
    """The README's table of today's recipes, between its markers."""
    rows = [
        row for recipe in README_RECIPES for row in recipe_rows(recipe, records, digests[recipe])
    ]
    return "\n".join([START, HEADER, *rows, END])


def results_page(records: list[dict], digests: dict[str, str]) -> str:
    """docs/results.md: today's recipes, then every recorded run, newest first."""
    rows = {recipe: recipe_rows(recipe, records, digests[recipe]) for recipe in RECIPES}
    today = [row for group in rows.values() for row in group if NO_RUN not in row]
    missing = ", ".join(f"`make {r}`" for r, group in rows.items() if NO_RUN in group[0])
    lines = [
        "# Results",
        "",
        "Generated by `make results` from the run records in `reports/runs/`: edit those, not",
        "this page. `make repro`, `make airbench`, `make study` (and the other recipes of the",
        "Makefile) each write one record when they finish; `make bench` writes one too.",
        "Test accuracy is on the 10,000 test images, which no training or model selection sees;",
        "mean ± standard deviation over seeds (each seed's newest run), times as medians of",
        "every run.",
        "",
        "## Today's recipes",
        "",
        "Runs whose params (seed aside) are today's `params.yaml` with the recipe's overrides.",
        "",
        HEADER,
        *today,
        "",
        f"No run recorded at today's params yet: {missing}." if missing else "",
        "",
        "## Every recorded run",
        "",
        "`params` marks with ✓ a run at today's params of its recipe. `load` is the 1-minute",
        "load average when the run started: above 0.5 on these 2 cores, other work shared them",
        "and the times are slower than the machine's.",
        "",
        "| date | recipe | commit | seed | params | test accuracy | weighted F1 "
        "| `tune` | `train` | whole run | load | hardware |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reversed(records):
        stages = r.get("stages") or {}
        current = "✓" if r["params_digest"] == digests.get(r["config"]) else r["params_digest"]
        load = r.get("load_before")
        note = " (backfilled)" if r.get("backfilled") else ""
        lines.append(
            f"| {r['date'][:10]} | `{r['config']}`{note} | `{r.get('commit', '?')[:7]}` "
            f"| {r.get('seed', '?')} | {current} | {r['test']['accuracy']:.4f} "
            f"| {number(r['test'].get('f1_weighted'))} "
            f"| {minutes([stages.get('tune')])} | {minutes([stages.get('train')])} "
            f"| {minutes([r.get('wall_seconds')])} | {'—' if load is None else f'{load:.1f}'} "
            f"| {machine(r)} |"
        )
    backfilled = [r for r in records if r.get("backfilled")]
    if backfilled:
        lines += ["", "Backfilled records were written once from the measurements of runs made",
                  "before records existed; each says where its figures come from:", ""]  # fmt: skip
        lines += [f"- `{r['file']}`: {r['backfilled']}" for r in backfilled]
    return "\n".join(lines) + "\n"


def render(root: Path = Path("."), runs: Path = RUNS_DIR) -> dict[Path, str]:
    """{file: its rendered text} for the FRONT_PAGES and RESULTS_PAGE under `root`."""
    records = load_records(root / runs)
    digests = {recipe: recipe_digest(recipe, root) for recipe in RECIPES}
    block = readme_block(records, digests)
    rendered = {root / page: with_block((root / page), block) for page in FRONT_PAGES}
    return rendered | {root / RESULTS_PAGE: results_page(records, digests)}


def with_block(page: Path, block: str) -> str:
    """`page`'s text with `block` between its markers."""
    text = page.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        raise PipelineError(f"{page.name}: needs one {START} and one {END} line")
    head, rest = text.split(START)
    return head + block + rest.split(END)[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cifar10_mlops.ops.results",
        description="Render README's results block and docs/results.md from reports/runs/.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when either is stale")
    args = parser.parse_args(argv)
    try:
        rendered = render()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    stale = [p for p, text in rendered.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path}: differs from its run records: run `make results`", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path in stale:
        write_atomic(path, rendered[path])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
