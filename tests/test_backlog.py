"""Retrains queued by published datasets (ops/backlog.py), on a real Prefect server with the
deployment on a pool no worker serves, so that every run waits: the same dataset announced
again starts nothing, and at most MAX_WAITING published-data runs wait after a run starts."""

import time

import pytest
import yaml

from cifar10_mlops.ops import backlog, publish
from helpers import deploy_to_pool

pytestmark = [pytest.mark.integration, pytest.mark.extended]  # a Prefect server each, a minute


@pytest.fixture
def deployed(prefect_server, project):
    """(sync Prefect client, deployment) of the retrain deployment on the pool `cpu`."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deploy_to_pool(project, prefect_server)
    name = yaml.safe_load((project / "params.yaml").read_text())["retrain"]["deployment"]
    with (
        temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        yield client, client.read_deployment_by_name(f"retrain/{name}")


def published_runs(client, deployment) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    )
    return sorted((r for r in runs if r.parameters.get("rev")), key=lambda r: r.created)


def announce(digest: str, rev: str) -> None:
    found = {"sha256": digest, "md5": "0" * 32, "format": "jpg", "counts": {}}
    publish.announce("cifar10.tar.gz", found, rev)


def test_the_same_dataset_announced_again_queues_no_second_retrain(deployed):
    client, deployment = deployed
    for _ in range(3):
        announce("a" * 64, "1" * 40)
    announce("b" * 64, "2" * 40)
    deadline = time.monotonic() + 60
    while len(published_runs(client, deployment)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(5)  # a third run would have come by now: the events are minutes apart at most
    runs = published_runs(client, deployment)
    assert sorted(r.parameters["rev"] for r in runs) == ["1" * 40, "2" * 40]


def test_runs_waiting_beyond_the_cap_are_cancelled_saying_why(deployed):
    client, deployment = deployed
    scheduled = client.create_flow_run_from_deployment(deployment.id, parameters={})
    made = [
        client.create_flow_run_from_deployment(
            deployment.id, parameters={"rev": f"{i:040x}", "force": True}
        )
        for i in range(5)
    ]
    cancelled = backlog.trim(client, deployment.id, own_id=made[0].id)
    assert cancelled == [r.id for r in made[backlog.MAX_WAITING + 1 :]]  # made[0] is running
    states = {r.id: client.read_flow_run(r.id).state for r in [scheduled, *made]}
    assert states[scheduled.id].is_scheduled()  # the schedule's runs are not touched
    for run in made[: backlog.MAX_WAITING + 1]:
        assert states[run.id].is_scheduled()
    for run in made[backlog.MAX_WAITING + 1 :]:
        assert states[run.id].is_cancelled()
        assert "at most 2 may" in states[run.id].message
    assert backlog.trim(client, deployment.id, own_id=made[0].id) == []  # already within it
