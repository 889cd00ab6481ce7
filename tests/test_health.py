"""The health check for every server the pipeline talks to (core/health.py): a server that
answers, one that answers with an error, and one that is not there, each told in one line."""

import pytest

from cifar10_mlops.core import health
from cifar10_mlops.core.errors import PipelineError
from servers import answering, free_port


def test_a_server_whose_health_answers_is_required_without_a_word():
    with answering({"/health": 200}) as (url, _):
        assert health.answers(f"{url}/health") and health.problem(f"{url}/health") is None
        health.require(url + "/", "MLflow server", "start it")


def test_an_error_status_is_the_problem():
    with answering({"/health": 503}) as (url, _):
        assert not health.answers(f"{url}/health")
        assert health.problem(f"{url}/health") == "Service Unavailable"
        with pytest.raises(PipelineError) as err:
            health.require(url, "MLflow server", "start it (make services)")
    assert str(err.value) == (
        f"MLflow server {url} is unreachable (Service Unavailable): start it (make services)"
    )


def test_a_server_that_is_not_there_is_named_with_the_hint():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(PipelineError, match=rf"^Prefect server {url} is unreachable \(.*refused"):
        health.require(url, "Prefect server", "start it", timeout=2)


SECRET = {"Authorization": "Basic c2VjcmV0"}


def test_a_redirect_to_another_host_loses_the_credentials_and_one_home_keeps_them():
    """urllib forwards every header but Content-* to wherever a redirect points."""
    with answering({"/health": 200}) as (elsewhere, seen):
        other_host = elsewhere.replace("127.0.0.1", "localhost")
        redirects = {"/away": f"{other_host}/health", "/home": "/health"}
        with answering({"/health": 200}, redirects) as (url, received):
            assert health.problem(f"{url}/away", headers=SECRET) is None
            assert health.problem(f"{url}/home", headers=SECRET) is None
    assert received[0]["Authorization"] == SECRET["Authorization"]  # sent where it was meant
    assert "Authorization" not in seen[0]  # not to the other host
    assert received[2]["Authorization"] == SECRET["Authorization"]  # the same origin keeps it


def test_the_mlflow_login_probe_sends_no_password_to_where_a_redirect_points(monkeypatch):
    from cifar10_mlops.core import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    probe = "/api/2.0/mlflow/experiments/search?max_results=1"
    with answering({probe: 200}) as (elsewhere, seen):
        other_host = elsewhere.replace("127.0.0.1", "localhost")
        with answering({}, {probe: f"{other_host}{probe}"}) as (url, received):
            tracking.check_login(url, timeout=10)
    assert received[0]["Authorization"].startswith("Basic ")
    assert seen and "Authorization" not in seen[0]
