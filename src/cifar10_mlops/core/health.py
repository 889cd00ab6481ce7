"""One health check for every server the pipeline talks to (MLflow, Prefect): fail fast,
naming the server, instead of letting a client retry a dead one for minutes."""

from __future__ import annotations

import urllib.error
import urllib.request

from cifar10_mlops.core.errors import PipelineError


def problem(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> str | None:
    """None when `url` answers with a success status, else why not (one line)."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
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
