"""`dvc plots show` without internet: DVC's page template with Vega, Vega-Lite and vega-embed
inlined.

DVC's default page loads the three scripts from cdn.jsdelivr.net, so offline its Vega plots
stay blank. This downloads the npm tarballs pinned in BUNDLES from the registry
(CIFAR10_NPM_REGISTRY, default https://registry.npmjs.org), checks each against the sha512
the registry publishes for it, reads only its minified browser bundle, and writes DVC's
default page with the three bundles inlined in place of the CDN tags.

Reads  three tarballs from the npm registry (about 6 MB in all).
Writes --out (default .dvc/plots/offline.html, about 830 kB), atomically; then, unless
       --no-config, sets `plots.html_template` to it in .dvc/config.local (`dvc config
       --local`), so a clone that never built it keeps DVC's default page.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import replacing
from cifar10_mlops.core.stage import run_stage

REGISTRY_ENV = "CIFAR10_NPM_REGISTRY"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
DEFAULT_OUT = Path(".dvc/plots/offline.html")
MAX_TARBALL_BYTES = 16 << 20  # 16 MiB; vega's is 3.9 MB
MAX_MEMBER_BYTES = 5 << 20  # 5 MiB per bundle; vega.min.js is 0.5 MB
TIMEOUT = 60.0  # seconds one read from the registry may wait


@dataclass(frozen=True)
class Bundle:
    """One npm package's minified browser build, pinned by the tarball's integrity."""

    name: str
    version: str
    integrity: str  # the registry's `dist.integrity`: sha512 of the tarball, base64
    member: str  # the bundle's path inside the tarball

    def url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.name}-{self.version}.tgz"


# In load order; the newest releases that DVC 3's specs (Vega-Lite v5 schema) and vega-embed 6
# accept: vega-lite 5.23 needs vega ^5.24, vega-embed 6.29 needs vega ^5.21.
BUNDLES = (
    Bundle(
        "vega",
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "package/build/vega.min.js",
    ),
    Bundle(
        "vega-lite",
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "package/build/vega-lite.min.js",
    ),
    Bundle(
        "vega-embed",
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "package/build/vega-embed.min.js",
    ),
)

# dvc_render.html.PAGE_HTML (dvc-render 1.0; a test checks they are the same): DVC fills
# {refresh_tag} and {plot_divs}, and {scripts} with the CDN tags, which this page leaves out.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    {scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""
PLACEHOLDERS = ("{refresh_tag}", "{scripts}", "{plot_divs}")
# Text that would end an inline <script> early or that DVC would replace inside it.
UNSAFE_IN_SCRIPT = ("</script", "<!--", *PLACEHOLDERS)


def fetch(bundle: Bundle, registry: str, timeout: float = TIMEOUT) -> bytes:
    """The bundle's tarball, at most MAX_TARBALL_BYTES, once its sha512 matches the pin."""
    url = bundle.url(registry)
    request = urllib.request.Request(url, headers={"User-Agent": "cifar10-mlops"})
    data = bytearray()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                data += chunk
                if len(data) > MAX_TARBALL_BYTES:
                    raise PipelineError(f"{url}: over {MAX_TARBALL_BYTES:,} bytes, refused")
    except urllib.error.HTTPError as exc:
        raise PipelineError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise PipelineError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    found = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if found != bundle.integrity:
        raise PipelineError(
            f"{bundle.name} {bundle.version}: integrity mismatch, {url} has {found}, "
            f"pinned {bundle.integrity}"
        )
    return bytes(data)


def read_member(bundle: Bundle, tarball: bytes) -> str:
    """The bundle's script from its tarball: one regular file of at most MAX_MEMBER_BYTES,
    read into memory; nothing is extracted to disk."""
    where = f"{bundle.name} {bundle.version}: {bundle.member}"
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
            member = next((m for m in tar if m.name == bundle.member), None)
            if member is None:
                raise PipelineError(f"{where} not in the tarball")
            if not member.isfile():
                raise PipelineError(f"{where} is not a regular file")
            if member.size > MAX_MEMBER_BYTES:
                raise PipelineError(
                    f"{where} is {member.size:,} bytes, over the limit of {MAX_MEMBER_BYTES:,}"
                )
            data = tar.extractfile(member).read(MAX_MEMBER_BYTES + 1)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PipelineError(f"{bundle.name} {bundle.version}: unreadable tarball ({exc})") from None
    try:
        script = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PipelineError(f"{where} is not UTF-8 text") from None
    lowered = script.lower()
    unsafe = [text for text in UNSAFE_IN_SCRIPT if text in lowered]
    if unsafe:
        raise PipelineError(f"{where} contains {unsafe[0]!r}, which cannot be inlined")
    return script


def render(scripts: Sequence[tuple[Bundle, str]]) -> str:
    """DVC's default page with each bundle inlined where DVC puts its CDN tags."""
    tags = "\n    ".join(
        f"<!-- npm {bundle.name}@{bundle.version} ({bundle.member}), {bundle.integrity} -->\n"
        f'    <script type="text/javascript">\n{script.rstrip()}\n    </script>'
        for bundle, script in scripts
    )
    return PAGE.replace("{scripts}", tags)


def build_template(
    out: Path,
    registry: str = DEFAULT_REGISTRY,
    bundles: Sequence[Bundle] = BUNDLES,
    timeout: float = TIMEOUT,
) -> int:
    """Download and check every bundle, then write the page to `out` in one step; returns
    its size in bytes. On any error nothing is written."""
    scripts = [
        (bundle, read_member(bundle, fetch(bundle, registry, timeout))) for bundle in bundles
    ]
    page = render(scripts)
    with replacing(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return len(page.encode("utf-8"))


def configure_dvc(template: Path) -> str:
    """Set `plots.html_template` in .dvc/config.local of the DVC repository whose .dvc folder
    holds `template`; DVC reads a relative value from that folder. Returns the value."""
    template = template.resolve()
    dvc_dir = next((p for p in template.parents if p.name == ".dvc"), None)
    if dvc_dir is None or not (dvc_dir / "config").is_file():
        raise PipelineError(
            f"{template} is not inside a DVC repository's .dvc folder: DVC would not find it "
            "(pass --no-config to only write it)"
        )
    value = template.relative_to(dvc_dir).as_posix()
    command = [sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", value]
    result = subprocess.run(command, cwd=dvc_dir.parent, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"dvc config --local plots.html_template failed: {reason}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--no-config", action="store_true", help="write the page only, leave DVC's config alone"
    )
    args = parser.parse_args(argv)
    registry = os.environ.get(REGISTRY_ENV, "").strip() or DEFAULT_REGISTRY
    size = build_template(args.out, registry, BUNDLES)
    versions = ", ".join(f"{b.name} {b.version}" for b in BUNDLES)
    print(f"wrote {args.out} ({size:,} bytes: {versions}, sha512 verified)")
    if not args.no_config:
        value = configure_dvc(args.out)
        print(f"set plots.html_template = {value} in .dvc/config.local: `dvc plots show` uses it")


if __name__ == "__main__":
    run_stage(main)
