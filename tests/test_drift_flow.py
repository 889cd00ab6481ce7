"""The Prefect flow `drift` (flows/drift.py) on a registered champion: its report artifact, the
event it emits on drift (and only then), and the retrain trigger that listens for it, off
unless params.yaml switches it on."""

import time

import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows import deploy, drift as flow_module
from helpers import make_images, stage_args
from cifar10_mlops.serving.sample import WINDOW
from cifar10_mlops.stages import register

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def drift_events() -> list:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        wanted = EventFilter(event=EventNameFilter(name=[flow_module.EVENT]))
        return client.read_events(wanted, limit=50).events  # the client's default, 100, is refused


def report() -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift-report"])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )  # fmt: skip
        return artifact.data


@pytest.mark.long(seconds=50)
def test_a_drifted_window_is_reported_and_announced_a_clean_one_only_reported(
    harness, candidate, tmp_path
):
    candidate(0.6)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    served = tmp_path / "served"
    served.mkdir()
    clean, _ = make_images(4, seed=7, like=1)
    np.savez(served / WINDOW, x=clean)
    verdict = flow_module.drift(sample_dir=str(served))
    assert verdict["detected"] is False
    assert report().startswith("# No drift: 40 images against cifar10-cnn v1's reference")

    np.savez(served / WINDOW, x=np.clip(clean.astype(int) + 100, 0, 255).astype(np.uint8))
    verdict = flow_module.drift(sample_dir=str(served))
    assert verdict["detected"] is True
    markdown = report()
    assert markdown.startswith("# **Drift**") and "| brightness |" in markdown
    assert "Each of the 4 tests at alpha 0.01/4" in markdown  # Bonferroni, as drift.py tests
    assert verdict["mlflow_run"] in markdown

    deadline = time.monotonic() + 30  # events reach the server's store asynchronously
    while not (events := drift_events()) and time.monotonic() < deadline:
        time.sleep(1)
    [event] = events  # the clean window emitted none
    assert event.resource.id == "cifar10.model.cifar10-cnn"
    assert event.payload["model"] == "cifar10-cnn v1"
    assert "brightness" in event.payload["drifted"]


@pytest.mark.parametrize("switched_on", [False, True])
def test_the_retrain_deployment_listens_for_drift_only_when_switched_on(
    params_file, in_empty_project, switched_on
):
    params_file(**{"monitor.retrain_on_drift": switched_on})
    triggers = deploy.deployment_settings()["triggers"]
    listening = [t for t in triggers if flow_module.EVENT in t.expect]
    assert len(listening) == int(switched_on)
    if switched_on:
        assert listening[0].parameters == {"force": True}
        assert listening[0].within.total_seconds() == 24 * 3600  # one retrain a day at most
