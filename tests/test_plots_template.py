import base64
import functools
import hashlib
import http.server
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from cifar10_mlops.ops import plots_template
from cifar10_mlops.ops.plots_template import Bundle, build_template
from cifar10_mlops.core.stage import run_stage
from helpers import REPO, add_bytes

SCRIPTS = {
    "vega": "window.vega = {version: 'fake-vega'};",
    "vega-lite": "window.vegaLite = {version: 'fake-vega-lite'};",
    "vega-embed": "window.vegaEmbed = function (el, spec) { document.title = 'embedded'; };",
}


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def write_tarball(folder: Path, name: str, members: dict[str, bytes]) -> Bundle:
    """`<folder>/<name>/-/<name>-1.0.0.tgz`, laid out as the npm registry serves it, and its
    pin."""
    path = folder / name / "-" / f"{name}-1.0.0.tgz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "package/package.json", b'{"name": "%s"}' % name.encode())
        for member, data in members.items():
            add_bytes(tar, member, data)
    return Bundle(name, "1.0.0", integrity(path.read_bytes()), f"package/build/{name}.min.js")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def registry(tmp_path):
    """A fake npm registry on 127.0.0.1 with vega, vega-lite and vega-embed tarballs; yields
    its URL, its folder and the pins of its three bundles."""
    folder = tmp_path / "registry"
    bundles = [
        write_tarball(folder, name, {f"package/build/{name}.min.js": script.encode()})
        for name, script in SCRIPTS.items()
    ]
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # polled every 0.05 s: shutdown() waits up to one interval (the default 0.5 s, per test)
    serve = functools.partial(server.serve_forever, poll_interval=0.05)
    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", folder, bundles
    server.shutdown()
    server.server_close()


def run_cli(monkeypatch, capsys, url: str, bundles, *args: str) -> tuple[int, str, str]:
    """`python -m cifar10_mlops.ops.plots_template <args>` in-process, against the fake registry
    and pins; returns the exit code, stdout and stderr."""
    monkeypatch.setenv(plots_template.REGISTRY_ENV, url)
    monkeypatch.setattr(plots_template, "BUNDLES", tuple(bundles))
    code = 0
    try:
        run_stage(lambda: plots_template.main(list(args)), name="plots_template")
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert list(out.parent.glob(f".{out.stem}*")) == []


def test_template_inlines_the_three_bundles_in_dvcs_page(registry, tmp_path, monkeypatch, capsys):
    url, _, bundles = registry
    out = tmp_path / "plots" / "offline.html"
    code, stdout, _ = run_cli(monkeypatch, capsys, url, bundles, "--out", str(out), "--no-config")
    assert code == 0 and f"wrote {out}" in stdout
    page = out.read_text()
    positions = [page.index(script) for script in SCRIPTS.values()]
    assert positions == sorted(positions)  # vega, then vega-lite, then vega-embed
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC would put its CDN tags there
    assert "cdn.jsdelivr" not in page and "https://" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert f"npm vega@1.0.0 (package/build/vega.min.js), {bundles[0].integrity}" in page


def test_page_is_dvcs_default_page():
    from dvc_render.html import PAGE_HTML

    assert plots_template.PAGE == PAGE_HTML


def test_integrity_mismatch_is_one_line_and_writes_nothing(registry, tmp_path, monkeypatch, capsys):
    url, _, bundles = registry
    bundles[1] = Bundle("vega-lite", "1.0.0", integrity(b"another tarball"), bundles[1].member)
    out = tmp_path / "plots" / "offline.html"
    code, _, err = run_cli(monkeypatch, capsys, url, bundles, "--out", str(out), "--no-config")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: vega-lite 1.0.0: integrity mismatch, ")
    assert_nothing_written(out)


def test_unreachable_registry_is_one_line(registry, tmp_path, monkeypatch, capsys):
    url, _, bundles = registry
    out = tmp_path / "offline.html"
    code, _, err = run_cli(monkeypatch, capsys, f"{url}/missing", bundles, "--out", str(out))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: cannot download {url}/missing/vega/-/vega-1.0.0.tgz: HTTP 404")
    assert_nothing_written(out)


def test_an_existing_template_stays_when_a_build_fails(registry, tmp_path):
    url, _, bundles = registry
    out = tmp_path / "offline.html"
    build_template(out, url, bundles)
    before = out.read_text()
    bundles[2] = Bundle("vega-embed", "1.0.0", integrity(b"x"), bundles[2].member)
    with pytest.raises(plots_template.PipelineError, match="vega-embed 1.0.0: integrity"):
        build_template(out, url, bundles)
    assert out.read_text() == before


def test_oversized_bundle_is_refused(registry, tmp_path, monkeypatch):
    url, folder, bundles = registry
    monkeypatch.setattr(plots_template, "MAX_MEMBER_BYTES", 1000)
    big = b"/*" + b"x" * 2000 + b"*/"
    bundles[0] = write_tarball(folder, "vega", {"package/build/vega.min.js": big})
    with pytest.raises(
        plots_template.PipelineError,
        match=r"vega 1.0.0: package/build/vega.min.js is 2,004 bytes, over the limit of 1,000",
    ):
        build_template(tmp_path / "offline.html", url, bundles)
    assert_nothing_written(tmp_path / "offline.html")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({}, "package/build/vega.min.js not in the tarball"),
        ({"package/build/vega.min.js": b"s = '</script>';"}, "contains '</script'"),
        ({"package/build/vega.min.js": b"s = '{plot_divs}';"}, "contains '{plot_divs}'"),
        ({"package/build/vega.min.js": b"\xff\xfe"}, "is not UTF-8 text"),
    ],
)
def test_unusable_bundles_are_refused(registry, tmp_path, members, message):
    url, folder, bundles = registry
    bundles[0] = write_tarball(folder, "vega", members)
    with pytest.raises(plots_template.PipelineError, match=f"vega 1.0.0: .*{re.escape(message)}"):
        build_template(tmp_path / "offline.html", url, bundles)


def test_tarball_over_the_limit_is_refused(registry, tmp_path, monkeypatch):
    url, _, bundles = registry
    monkeypatch.setattr(plots_template, "MAX_TARBALL_BYTES", 10)
    with pytest.raises(plots_template.PipelineError, match=r"vega-1.0.0.tgz: over 10 bytes"):
        build_template(tmp_path / "offline.html", url, bundles)


@pytest.mark.integration
def test_dvc_plots_show_uses_the_template_it_configures(registry, tmp_path, monkeypatch, capsys):
    url, _, bundles = registry
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / "history.csv").write_text("epoch,accuracy\n1,0.5\n2,0.7\n")
    monkeypatch.chdir(repo)
    code, stdout, _ = run_cli(monkeypatch, capsys, url, bundles)  # the defaults, as make runs it
    assert code == 0 and "set plots.html_template = plots/offline.html" in stdout
    assert "html_template = plots/offline.html" in (repo / ".dvc" / "config.local").read_text()
    assert "html_template" not in (repo / ".dvc" / "config").read_text()
    shown = subprocess.run(
        [*dvc, "plots", "show", "history.csv", "-o", str(tmp_path / "shown")],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    page = (tmp_path / "shown" / "index.html").read_text()
    assert SCRIPTS["vega-embed"] in page and "vegaEmbed('#" in page
    assert "cdn.jsdelivr" not in page


def test_template_outside_a_dvc_folder_cannot_be_configured(tmp_path):
    with pytest.raises(plots_template.PipelineError, match="not inside a DVC repository"):
        plots_template.configure_dvc(tmp_path / "offline.html")


REAL = REPO / plots_template.DEFAULT_OUT


@pytest.mark.skipif(not REAL.is_file(), reason="`make plots` has not built the template here")
def test_the_built_template_has_the_pinned_bundles():
    """The template `make plots` built from the real registry holds the bundles pinned now."""
    page = REAL.read_text()
    for bundle in plots_template.BUNDLES:
        assert f"npm {bundle.name}@{bundle.version} ({bundle.member}), {bundle.integrity}" in page
    assert "{plot_divs}" in page and not re.search(r"<script[^>]*\bsrc=", page)
