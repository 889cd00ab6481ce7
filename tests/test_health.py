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
