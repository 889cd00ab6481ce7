"""Fetching a URL as `download` does: which redirects it follows, which failures it retries,
and what it believes of the server's answer.

- A redirect goes to https, or to http only from http; to a loopback, private or link-local
  address only from one (a public server cannot point the download at the machine's network).
- A host that does not resolve, a TLS error or a refused redirect fails at once; a refused or
  dropped connection, a timeout, HTTP 5xx and 429 are retried by `download`.
- A Content-Length that is not a number is an error, not a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import PurePosixPath

from cifar10_mlops.core.errors import PipelineError


def archive_name(url: str) -> str:
    """The file name a URL's archive is saved under: its path's last part, if that is a plain
    file name (not `..`, `.` or empty), else `archive`."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name if name not in ("", ".", "..") and "\x00" not in name else "archive"


def permanent(exc: Exception) -> bool:
    """Whether a failed request would fail again: a host that does not resolve, a TLS
    certificate or protocol error, a refused redirect; a refused or dropped connection and a
    timeout may pass."""
    reason = getattr(exc, "reason", exc)
    return isinstance(exc, RefusedRedirect) or isinstance(reason, (socket.gaierror, ssl.SSLError))


class RefusedRedirect(urllib.error.URLError):
    """A redirect `download` does not follow."""


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to https, or to http from http; and to a loopback, private or
    link-local address only from one, so that a public server cannot point the download at
    the machine's own network."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new.scheme not in ("http", "https") or (old.scheme, new.scheme) == ("https", "http"):
            raise RefusedRedirect(f"refused a redirect from {old.scheme}:// to {new.scheme}://")
        if internal(new.hostname) and not internal(old.hostname):
            raise RefusedRedirect(f"refused a redirect to the internal address {new.hostname}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def internal(host: str | None) -> bool:
    """Whether `host` resolves to a loopback, private, link-local or otherwise non-global
    address (any of its addresses)."""
    try:
        infos = socket.getaddrinfo(host or "", None)
    except OSError:
        return False  # the request itself will say it does not resolve
    return any(not ipaddress.ip_address(info[4][0].split("%")[0]).is_global for info in infos)


OPENER = urllib.request.build_opener(SafeRedirects)


def content_length(shown: str, response) -> int | None:
    """The response's Content-Length; None when absent or 0, an error when not a number."""
    value = (response.headers.get("Content-Length") or "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise PipelineError(f"cannot download {shown}: the server sent "
                            f"Content-Length {value[:40]!r}, not a number")  # fmt: skip
    return int(value) or None
