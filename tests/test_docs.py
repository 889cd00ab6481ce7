"""The README and the docs site as a reader meets them: short, built strict and offline, and
every command they show exists."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

BIN = Path(sys.executable).parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```|`([^`\n]+)`", re.S)


def shown_commands() -> list[tuple[str, str]]:
    """(page, command line) for every line of a code block or inline code span of the pages
    that starts with `make ` or `cifar10-mlops ` (`.venv/bin/` allowed)."""
    found = []
    for page in PAGES:
        for block, inline in CODE.findall(page.read_text()):
            for line in (block or inline).splitlines():
                line = line.split(" #")[0].strip().removeprefix(".venv/bin/")
                line = re.sub(r"^([A-Z_]+=\S+ )+", "", line)  # VAR=value make ...
                if line.startswith(("make ", "cifar10-mlops ")):
                    found.append((page.name, line))
    return found


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert "## Quick start" in lines[:40]
    quick = "\n".join(lines[lines.index("## Quick start") :])
    assert re.search(r"```bash\nmake repro .*\nmake test .*\n```", quick)


def test_every_make_target_and_cli_command_the_docs_show_exists():
    commands = shown_commands()
    make = [shlex.split(line)[1:] for _, line in commands if line.startswith("make ")]
    targets = sorted({w for words in make for w in words if re.fullmatch(r"[a-z][a-z-]*", w)})
    cli = [line.split() for _, line in commands if line.startswith("cifar10-mlops ")]
    subcommands = sorted({words[1] for words in cli if len(words) > 1})
    assert {"repro", "test", "airbench", "study", "docs", "results"} <= set(targets)
    assert {"predict", "serve", "verify", "checkout"} <= set(subcommands)
    for target in targets:
        dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=REPO,
                             capture_output=True, text=True)  # fmt: skip
        assert dry.returncode == 0, f"`make {target}` in the docs: {dry.stderr.strip()}"
    for sub in subcommands:
        shown = subprocess.run([BIN / "cifar10-mlops", sub, "--help"], capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert shown.returncode == 0, f"`cifar10-mlops {sub}` in the docs: {shown.stderr[-300:]}"


@pytest.mark.integration
def test_the_site_builds_strict_and_loads_nothing_from_other_hosts(tmp_path):
    built = subprocess.run(
        [BIN / "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "WARNING" not in built.stderr, built.stderr
    pages = {p.relative_to(tmp_path / "site").as_posix(): p.read_text()
             for p in (tmp_path / "site").rglob("*.html")}  # fmt: skip
    for name in ("index.html", "results.html", "pipeline.html", "settings.html"):
        assert name in pages
    assert "Every recorded run" in pages["results.html"]
    loads = re.compile(r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)=\"(https?:)?//", re.I)
    for name, html in pages.items():
        assert not loads.search(html), f"{name} loads from another host"
    # Material fetches mermaid from a CDN when a page has a diagram: the docs have none
    for page in PAGES:
        assert "```mermaid" not in page.read_text(), page.name
