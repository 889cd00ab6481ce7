import http.server
import json
import os
import pickle
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from cifar10_mlops.stages.download import describe_source, download
from cifar10_mlops.core.errors import PipelineError
from helpers import (
    add_bytes,
    error_line,
    evil_tar,
    file_member,
    link_member,
    write_image_archive,
    write_python_archive,
    zeros_tar,
)


def run(archive: Path, out: Path, checksum: str | None = None, retries: int = 1) -> dict:
    return download(str(archive), checksum, out, retries=retries, timeout=5, deadline=60)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_python_archive_is_checked_counted_and_kept_packed(python_archive, tmp_path):
    out = tmp_path / "raw"
    manifest = run(python_archive, out)
    assert manifest["format"] == "python" and manifest["root"] == "cifar-10-batches-py"
    assert manifest["counts"]["train"]["cat"] == 10 and manifest["counts"]["test"]["truck"] == 4
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # One file for DVC to track, not the extracted tree: the archive, byte for byte.
    assert sorted(p.name for p in out.iterdir()) == ["cifar-10-python.tar.gz", "manifest.json"]
    assert (out / manifest["archive"]).read_bytes() == python_archive.read_bytes()


def test_image_archive_is_extracted_and_counted(image_archive, tmp_path):
    manifest = run(image_archive, tmp_path / "raw")
    assert manifest["format"] == "images" and manifest["root"] == "cifar10"
    assert sum(manifest["counts"]["train"].values()) == 100
    assert len(manifest["sha256"]) == 64


def test_known_checksum_is_verified(python_archive, tmp_path):
    digest = run(python_archive, tmp_path / "a")["md5"]
    assert (
        run(python_archive, tmp_path / "b", checksum=f"md5:{digest}")["checksum_verified"]
        == f"md5:{digest}"
    )


def test_checksum_mismatch(python_archive, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(PipelineError, match="checksum mismatch for cifar-10-python.tar.gz: md5 is"):
        run(python_archive, out, checksum="md5:" + "0" * 32)
    assert_nothing_written(out)


def test_truncated_archive(python_archive, tmp_path):
    data = python_archive.read_bytes()
    python_archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="truncated or corrupt archive"):
        run(python_archive, tmp_path / "raw")
    assert_nothing_written(tmp_path / "raw")


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "cifar.tar.gz"
    bogus.write_text("<html>404 not found</html>")
    with pytest.raises(PipelineError, match="cifar.tar.gz: not a tar or zip archive"):
        run(bogus, tmp_path / "raw")
    assert_nothing_written(tmp_path / "raw")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_member("../escaped.txt"), "path leaves the target folder"),
        (file_member("cifar10/../../escaped.txt"), "path leaves the target folder"),
        (file_member("/tmp/escaped.txt"), "path leaves the target folder"),
        (link_member("cifar10/link", "../../.."), "points outside"),
        (link_member("cifar10/link", "/etc/passwd"), "points outside"),
        (link_member("cifar10/hard", "/etc/passwd", tarfile.LNKTYPE), "hard link to '/etc/"),
        (link_member("cifar10/train/hard", "../outside", tarfile.LNKTYPE), "hard link to '../"),
        (link_member("cifar10/train/hard", "cifar10/missing", tarfile.LNKTYPE), "hard link"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, message):
    archive = evil_tar(tmp_path / "evil.tar.gz", member)
    out = tmp_path / "nested" / "raw"
    with pytest.raises(PipelineError, match=f"unsafe archive member .*{message}"):
        run(archive, out)
    assert_nothing_written(out)
    assert (
        not (tmp_path / "escaped.txt").exists()
        and not (tmp_path / "nested" / "escaped.txt").exists()
    )


def test_zip_member_with_parent_path_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", "owned")
    with pytest.raises(PipelineError, match="path leaves the target folder"):
        run(archive, tmp_path / "raw")
    assert not (tmp_path / "escaped.txt").exists()


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


class Harmless:
    """Any class outside numpy's array machinery is refused, harmful or not."""


@pytest.mark.parametrize("payload", [Exploit, Harmless])
def test_pickle_referring_to_other_classes_is_refused(tmp_path, payload):
    Exploit.marker = tmp_path / "pwned"
    archive = write_python_archive(tmp_path / "cifar-10-python.tar.gz")
    evil = pickle.dumps({b"data": payload(), b"labels": []}, protocol=2)
    with tarfile.open(archive) as src, tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        for m in src.getmembers():
            data = evil if m.name.endswith("test_batch") else src.extractfile(m).read()
            add_bytes(tar, m.name, data)
    with pytest.raises(
        PipelineError, match="test_batch: unsafe or invalid pickle: refusing to load"
    ):
        run(tmp_path / "evil.tar.gz", tmp_path / "raw")
    assert not Exploit.marker.exists()
    assert_nothing_written(tmp_path / "raw")


def test_missing_class_folder(tmp_path):
    archive = write_image_archive(tmp_path / "a.tar.gz")
    with tarfile.open(archive) as src, tarfile.open(tmp_path / "b.tar.gz", "w:gz") as dst:
        for m in src.getmembers():
            if "/test/frog/" not in m.name:
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(PipelineError, match=r"missing class folder\(s\) in test/: frog"):
        run(tmp_path / "b.tar.gz", tmp_path / "raw")
    assert_nothing_written(tmp_path / "raw")


def test_missing_local_source(tmp_path):
    with pytest.raises(PipelineError, match="source not found: .*nowhere.tar.gz"):
        run(tmp_path / "nowhere.tar.gz", tmp_path / "raw")


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payload`, failing the first `failures` requests with HTTP 503."""

    payload, failures, requests = b"", 0, 0

    def do_GET(self):
        type(self).requests += 1
        if type(self).requests <= type(self).failures:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_source():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_transient_http_errors_are_retried(python_archive, tmp_path, http_source, capsys):
    FlakyHandler.payload, FlakyHandler.failures, FlakyHandler.requests = (
        python_archive.read_bytes(),
        1,
        0,
    )
    url = f"http://127.0.0.1:{http_source.server_port}/cifar-10-python.tar.gz"
    manifest = run(url, tmp_path / "raw", retries=3)
    assert manifest["format"] == "python" and FlakyHandler.requests == 2
    assert "download failed (HTTP 503); retry 1/2" in capsys.readouterr().out


def test_unreachable_source(tmp_path, http_source):
    port = http_source.server_port
    http_source.shutdown()
    http_source.server_close()
    url = f"http://127.0.0.1:{port}/cifar.tar.gz"
    with pytest.raises(PipelineError, match=f"cannot download {url}: .*refused.*after 2 attempts"):
        run(url, tmp_path / "raw", retries=2)
    assert_nothing_written(tmp_path / "raw")


def test_http_404_is_not_retried(tmp_path, http_source, monkeypatch):
    url = f"http://127.0.0.1:{http_source.server_port}/x.tar.gz"
    FlakyHandler.requests = 0
    monkeypatch.setattr(FlakyHandler, "failures", 99)
    monkeypatch.setattr(
        FlakyHandler, "send_error", lambda self, code: super(FlakyHandler, self).send_error(404)
    )
    with pytest.raises(PipelineError, match="cannot download .*: HTTP 404"):
        run(url, tmp_path / "raw", retries=3)
    assert FlakyHandler.requests == 1


def test_cli_uses_the_environment_override(python_archive, tmp_path, params_file, run_module):
    params = params_file()
    out = tmp_path / "raw"
    env = {"CIFAR10_SOURCE": str(python_archive), "CIFAR10_CHECKSUM": "sha256:" + "1" * 64}
    result = run_module(
        "cifar10_mlops.stages.download", "--params", str(params), "--out", str(out), env=env
    )
    assert result.returncode == 1
    assert error_line(result).startswith("error: checksum mismatch for cifar-10-python.tar.gz")
    env.pop("CIFAR10_CHECKSUM")
    result = run_module(
        "cifar10_mlops.stages.download", "--params", str(params), "--out", str(out), env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["source"] == python_archive.name


def test_the_same_archive_makes_the_same_manifest_from_any_folder(python_archive, tmp_path):
    # DVC hashes data/raw, manifest included: a machine-specific path there would give every
    # clone its own hash of the same data, and no cache or remote could ever be shared.
    other = tmp_path / "elsewhere" / "deeper"
    other.mkdir(parents=True)
    copy = other / python_archive.name
    copy.write_bytes(python_archive.read_bytes())
    outs = [tmp_path / "raw-a", tmp_path / "raw-b"]
    for source, out in zip([python_archive, copy], outs):
        download(str(source), None, out, retries=1, timeout=5, deadline=60)
    manifests = [(out / "manifest.json").read_bytes() for out in outs]
    assert manifests[0] == manifests[1]
    assert str(tmp_path) not in manifests[0].decode()


@pytest.mark.parametrize(
    ("source", "recorded"),
    [
        ("https://user:secret@example.org:8443/d/cifar.tgz?token=abc#x",
         "https://example.org:8443/d/cifar.tgz"),
        ("file:///srv/data/cifar.tgz", "cifar.tgz"),
        ("../shared/data/cifar10-jpg.tar.gz", "cifar10-jpg.tar.gz"),
    ],
)  # fmt: skip
def test_the_manifest_names_a_source_without_paths_or_credentials(source, recorded):
    assert describe_source(source) == recorded


# --- limits: archive bombs are refused while streaming, before their bytes are written ---


def test_zip_member_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    from cifar10_mlops.core import archive

    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1000)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cifar10/big.bin", bytes(100_000))
    with pytest.raises(PipelineError, match="member 'cifar10/big.bin' unpacks to 100,000 bytes"):
        run(archive, tmp_path / "raw")
    assert_nothing_written(tmp_path / "raw")


def test_download_cli_refuses_a_bomb_in_one_line(tmp_path, params_file, run_module):
    from cifar10_mlops.core.archive import MAX_MEMBER_BYTES

    archive = zeros_tar(tmp_path / "bomb.tar.gz", {"c/big.bin": 2 * MAX_MEMBER_BYTES})
    out = tmp_path / "raw"
    result = run_module(
        "cifar10_mlops.stages.download", "--params", str(params_file()), "--out", str(out),
        env={"CIFAR10_SOURCE": str(archive)},
    )  # fmt: skip
    assert result.returncode == 1
    assert error_line(result).startswith("error: bomb.tar.gz: member 'c/big.bin' unpacks to")
    assert_nothing_written(out)


# --- the download's overall deadline ---


class DripHandler(http.server.BaseHTTPRequestHandler):
    """Promises 10 MB and sends a byte every 0.1 s: never idle long enough for `timeout`."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_download_that_never_finishes_stops_at_its_deadline(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DripHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    out = tmp_path / "raw"
    began = time.monotonic()
    try:
        with pytest.raises(PipelineError, match=r"not finished within download.deadline = 2 s"):
            download(url, None, out, retries=3, timeout=1, deadline=2)
    finally:
        server.shutdown()
    assert time.monotonic() - began < 4
    assert_nothing_written(out)


# --- scratch folders of killed processes are removed by the next run ---


def test_scratch_left_by_a_killed_process_is_removed_by_the_next_run(python_archive, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "raw"
    code = (
        "import sys, time; from pathlib import Path; from cifar10_mlops.core.files import scratch\n"
        f"with scratch(Path({str(tmp_path)!r}), '.raw') as tmp:\n"
        "    (tmp / 'half.tar.gz').write_bytes(bytes(1000)); print(tmp, flush=True); time.sleep(60)"
    )

    def holder() -> tuple[subprocess.Popen, Path]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        return proc, Path(proc.stdout.readline().strip())

    killed, left = holder()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert left.is_dir() and left.name.startswith(f".raw-{killed.pid}-")  # what kill -9 leaves
    running, kept = holder()  # a download running meanwhile: its folder stays
    # A folder named after a live pid (pids repeat) whose lock nobody holds: removed.
    reused = tmp_path / f".raw-{os.getpid()}-old"
    reused.mkdir()
    (reused / ".lock").touch()
    try:
        run(python_archive, out)
        assert not left.exists() and not reused.exists() and kept.is_dir()
        names = [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")]
        assert names == [kept.name]
    finally:
        running.kill()
        running.wait()


class EndlessHandler(http.server.BaseHTTPRequestHandler):
    """An endless body, with or without a (huge) Content-Length."""

    length = None

    def do_GET(self):
        self.send_response(200)
        if self.length:
            self.send_header("Content-Length", str(self.length))
        self.end_headers()
        try:
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("length", [None, 10**12], ids=["no-length", "huge-length"])
def test_a_source_larger_than_any_cifar10_archive_fills_no_disk(tmp_path, monkeypatch, length):
    from cifar10_mlops.stages import download as module

    monkeypatch.setattr(module, "MAX_ARCHIVE_BYTES", 4 << 20)
    monkeypatch.setattr(EndlessHandler, "length", length)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cifar.tar.gz"
    written = []
    real = module.check_size
    monkeypatch.setattr(module, "check_size", lambda s, n: (written.append(n), real(s, n)))
    try:
        with pytest.raises(PipelineError, match=r"over the limit of 4,194,304 for an archive"):
            download(url, None, tmp_path / "raw", retries=3, timeout=5, deadline=30)
    finally:
        server.shutdown()
    assert max(written) <= (4 << 20) + (1 << 20) if length is None else written == [10**12]
    assert_nothing_written(tmp_path / "raw")


def test_a_local_source_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from cifar10_mlops.stages import download as module

    monkeypatch.setattr(module, "MAX_ARCHIVE_BYTES", 1000)
    big = tmp_path / "big.tar.gz"
    big.write_bytes(bytes(1001))
    with pytest.raises(PipelineError, match=r"big.tar.gz: 1,001 bytes or more, over the limit"):
        run(big, tmp_path / "raw")


class OddHandler(http.server.BaseHTTPRequestHandler):
    """Answers each path as `routes` says: (status, headers), with `payload` as the body of a
    200; counts requests."""

    routes, payload, requests = {}, b"", 0

    def do_GET(self):
        type(self).requests += 1
        status, headers = self.routes.get(self.path, (200, {}))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status == 200 and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        if status == 200:
            self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_server(python_archive, monkeypatch):
    monkeypatch.setattr(OddHandler, "payload", python_archive.read_bytes())
    monkeypatch.setattr(OddHandler, "requests", 0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OddHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_content_length_that_is_not_a_number_is_one_line(tmp_path, odd_server, monkeypatch):
    monkeypatch.setattr(OddHandler, "routes", {"/c.tar.gz": (200, {"Content-Length": "12abc"})})
    with pytest.raises(PipelineError, match="sent Content-Length '12abc', not a number"):
        run(f"{odd_server}/c.tar.gz", tmp_path / "raw", retries=3)
    assert OddHandler.requests == 1
    assert_nothing_written(tmp_path / "raw")


def test_a_url_ending_in_dot_dot_saves_the_archive_under_a_plain_name(tmp_path, odd_server):
    manifest = run(f"{odd_server}/data/..", tmp_path / "raw")
    assert manifest["archive"] == "archive" and manifest["format"] == "python"
    assert (tmp_path / "raw" / "archive").is_file()


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://no-such-host.invalid/c.tar.gz", "cannot download http://no-such-host.invalid"),
        ("gopher://example.org/c.tar.gz", r"gopher:// is not http\(s\) or a file"),
    ],
    ids=["dns", "scheme"],
)
def test_a_failure_that_would_repeat_is_not_retried(tmp_path, capsys, url, message):
    started = time.monotonic()
    with pytest.raises(PipelineError, match=message):
        run(url, tmp_path / "raw", retries=5)  # retries wait 1, 2, 4, 8 s
    assert "retry" not in capsys.readouterr().out and time.monotonic() - started < 5


def test_redirects_to_internal_addresses_or_files_are_refused(tmp_path, odd_server, monkeypatch):
    from cifar10_mlops.core import urls

    internal = odd_server.replace("127.0.0.1", "localhost")
    monkeypatch.setattr(OddHandler, "routes", {
        "/to-internal": (302, {"Location": f"{internal}/c.tar.gz"}),
        "/to-file": (302, {"Location": "file:///etc/passwd"}),
    })  # fmt: skip
    # 127.0.0.1 plays a public server, localhost the machine's own network
    monkeypatch.setattr(urls, "internal", lambda host: host == "localhost")
    with pytest.raises(PipelineError, match="refused a redirect to the internal address localhost"):
        run(f"{odd_server}/to-internal", tmp_path / "raw", retries=3)
    with pytest.raises(
        PipelineError, match="Redirection to url 'file:///etc/passwd' is not allowed"
    ):
        run(f"{odd_server}/to-file", tmp_path / "raw", retries=3)
    assert OddHandler.requests == 2  # neither followed nor retried
    assert_nothing_written(tmp_path / "raw")
    # from the machine's own network to itself is followed
    monkeypatch.setattr(urls, "internal", lambda host: True)
    assert run(f"{odd_server}/to-internal", tmp_path / "raw")["format"] == "python"


def test_errors_name_the_source_without_its_credentials_or_signature(
    tmp_path, odd_server, monkeypatch
):
    """CIFAR10_SOURCE may hold a login or a signed query: they reach no log or webhook."""
    signed = "/c.tar.gz?X-Amz-Signature=s3cr3t"
    monkeypatch.setattr(OddHandler, "routes", {signed: (404, {})})
    with pytest.raises(PipelineError) as refused:
        run(odd_server + signed, tmp_path / "raw", retries=3)
    assert str(refused.value) == f"cannot download {odd_server}/c.tar.gz: HTTP 404 Not Found"
    with pytest.raises(PipelineError) as refused:  # urllib takes no login in a URL: DNS fails
        run(odd_server.replace("http://", "http://ana:hunter2@") + signed, tmp_path / "raw")
    assert str(refused.value).startswith(f"cannot download {odd_server}/c.tar.gz: ")
    assert "hunter2" not in str(refused.value) and "s3cr3t" not in str(refused.value)
