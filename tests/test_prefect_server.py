"""The Prefect server the flows talk to (ops/prefect_server.py): checked before a flow runs, on
a stand-in server that answers its health but wants the auth string; the real server's
refusals are tested in test_services.py."""

import base64

import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.prefect_server import check_prefect
from servers import answering, free_port

AUTH = "admin:secret"


def test_without_the_auth_string_the_check_says_to_set_it():
    with answering({"/api/health": 200, "/api/hello": 401}) as (url, _):
        with temporary_settings({PREFECT_API_URL: f"{url}/api", PREFECT_API_AUTH_STRING: None}):
            with pytest.raises(PipelineError) as err:
                check_prefect()
    assert str(err.value).startswith(
        f"Prefect server {url}/api refused the request (Unauthorized): set PREFECT_API_AUTH_STRING"
    )


def test_the_auth_string_is_sent_as_prefects_client_sends_it():
    with answering({"/api/health": 200, "/api/hello": 200}) as (url, received):
        with temporary_settings({PREFECT_API_URL: f"{url}/api", PREFECT_API_AUTH_STRING: AUTH}):
            check_prefect()
    assert received[-1]["Authorization"] == f"Basic {base64.b64encode(AUTH.encode()).decode()}"


def test_a_server_that_is_not_there_is_named_before_anything_runs():
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        with pytest.raises(
            PipelineError, match=rf"^Prefect server {url} is unreachable .*make services"
        ):
            check_prefect(timeout=2)
