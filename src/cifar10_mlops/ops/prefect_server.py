"""The Prefect server the flows, workers and `publish-data` talk to (PREFECT_API_URL)."""

from __future__ import annotations

import base64

from cifar10_mlops.core import health
from cifar10_mlops.core.errors import PipelineError


def check_prefect(timeout: float = 5.0) -> None:
    """The Prefect API named by PREFECT_API_URL answers and takes PREFECT_API_AUTH_STRING
    (nothing to check when unset: Prefect then starts a temporary local server itself)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        health.require(
            url, "Prefect server", "start it (make services), or unset PREFECT_API_URL", timeout
        )
        auth = PREFECT_API_AUTH_STRING.value()  # sent as Prefect's own client sends it
        token = base64.b64encode(auth.encode()).decode() if auth else None
        headers = {"Authorization": f"Basic {token}"} if token else {}
        reason = health.problem(f"{url.rstrip('/')}/hello", timeout, headers)
        if reason is not None:
            raise PipelineError(
                f"Prefect server {url} refused the request ({reason}): set "
                "PREFECT_API_AUTH_STRING to its auth string (`make services` keeps it in "
                ".services/prefect.auth)"
            )


def check_services() -> None:
    """Fail before a flow runs when the MLflow or Prefect server it needs is down."""
    from cifar10_mlops.core import tracking

    tracking.check_reachable()
    check_prefect()


def require_team_servers(prefect_why: str, mlflow_why: str) -> None:
    """PREFECT_API_URL is set and MLFLOW_TRACKING_URI names an MLflow server (not the
    embedded store), as a worker or a work-pool search needs, and both answer; the errors
    end with `prefect_why` and `mlflow_why`."""
    from prefect.settings import PREFECT_API_URL

    from cifar10_mlops.core import tracking

    if not PREFECT_API_URL.value():
        raise PipelineError(f"PREFECT_API_URL is not set: {prefect_why}")
    if not tracking.tracking_uri().startswith(("http://", "https://")):
        raise PipelineError(f"MLFLOW_TRACKING_URI is not an MLflow server: {mlflow_why}")
    check_services()
