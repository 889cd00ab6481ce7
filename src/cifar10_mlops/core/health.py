"""One health check for every server the pipeline talks to (MLflow, Prefect): fail fast,
naming the server, instead of letting a client retry a dead one for minutes."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from cifar10_mlops.core.errors import PipelineError


# Headers that carry a credential: urllib forwards every header but Content-* on a redirect,
# to any host; these go only where they were sent.
SECRET_HEADERS = ("authorization", "cookie", "proxy-authorization")


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class KeepSecretsHome(urllib.request.HTTPRedirectHandler):
    """Follow a redirect as urllib does, without the credentials when it leaves the origin."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in SECRET_HEADERS:
                    del new.headers[name]
        return new


_OPENER = urllib.request.build_opener(KeepSecretsHome)


def open_url(request: urllib.request.Request, timeout: float):
    """urllib.request.urlopen, but a redirect to another origin drops the credentials."""
    return _OPENER.open(request, timeout=timeout)


def problem(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> str | None:
    """None when `url` answers with a success status, else why not (one line)."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with open_url(request, timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers with a success status."""
    return problem(url, timeout) is None


def require(base_url: str, what: str, hint: str, timeout: float = 5.0) -> None:
    """Raise PipelineError `<what> <base_url> is unreachable (<reason>): <hint>` unless
    `<base_url>/health` answers (MLflow's and Prefect's API both serve one)."""
    reason = problem(f"{base_url.rstrip('/')}/health", timeout)
    if reason is not None:
        raise PipelineError(f"{what} {base_url} is unreachable ({reason}): {hint}")
