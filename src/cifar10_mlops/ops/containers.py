"""The docker work pool: each flow run in a fresh container of the project's image.

`python -m flows.worker --pool docker --type docker` (compose's `docker-worker`) is Prefect's
docker worker (prefect-docker) on the Docker API at DOCKER_HOST: Docker's, or podman's
(`podman system service`). Each flow run it takes starts a new container that:
- runs the worker's own image (by id), on the worker's own networks, with the worker's /datasets
  folder read-only, found through the API when the worker itself runs in a container
  (IMAGE_VAR and NETWORK_VAR name them where it does not);
- mounts nothing else: its work tree is the image's /app, its own, removed with the container;
- gets only the environment the worker passes (PASSED): its MLflow login, S3 keys, DVC remote,
  Prefect's API and the dataset's source; the run's own Prefect variables; and the flow to
  run, the image's flows/retrain.py, loaded from its entrypoint (no pull step runs);
- runs Prefect's own flow-run command, whatever the pool's template says.

A run's job variables may set the memory limits and nothing else (ALLOWED): the image, command,
environment, volumes, networks and privileges are the worker's. The pool's template makes the
server refuse the others, and the worker refuses them again, since any API user may edit a
template.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.pool import ENTRYPOINT

ALLOWED = ("mem_limit", "memswap_limit")
COMMAND = "prefect flow-run execute"  # Prefect's own flow-run command
DATASETS = "/datasets"  # where compose mounts the offline archives (docker-compose.yml)
IMAGE_VAR, NETWORK_VAR = "FLOW_RUN_IMAGE", "FLOW_RUN_NETWORK"
# What a flow-run container needs of the worker's environment, and nothing else.
PASSED = (
    "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_UI_URL",
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "DVC_REMOTE", "CIFAR10_SOURCE", "CIFAR10_CHECKSUM",
    "RETRAIN_NOTIFY_BLOCK", "RETRAIN_NOTIFY_ALLOW_PRIVATE", "PREFECT_SERVER_ANALYTICS_ENABLED",
)  # fmt: skip


def pinned_template() -> dict:
    """prefect-docker's default base job template with only ALLOWED left as variables (no
    others accepted); the rest takes the job configuration's defaults, which the worker
    replaces with its own (FlowRunContainer.apply)."""
    from prefect_docker.worker import DockerWorker

    template = DockerWorker.get_default_base_job_template()
    config, variables = template["job_configuration"], template["variables"]
    template["job_configuration"] = {k: v for k, v in config.items() if k in ALLOWED}
    variables["properties"] = {k: v for k, v in variables["properties"].items() if k in ALLOWED}
    variables["additionalProperties"] = False
    variables.pop("$defs", None)  # the refused variables' types
    return template


@dataclass(frozen=True)
class FlowRunContainer:
    """What every container the worker starts gets: image, networks, volumes, environment."""

    image: str
    networks: list[str]
    volumes: list[str] = field(default_factory=list)

    def apply(self, configuration: Any, environ: dict[str, str] | None = None) -> None:
        """Set a flow run's prepared DockerWorkerJobConfiguration to this container: the run's
        own Prefect variables (flow run id, API) kept, PASSED added from `environ` (the
        worker's), everything else the worker's."""
        environ = os.environ if environ is None else environ
        configuration.image = self.image
        configuration.image_pull_policy = "Never"  # the worker's own image, here already
        configuration.networks = list(self.networks)
        configuration.network_mode = None
        configuration.volumes = list(self.volumes)
        configuration.auto_remove = True
        configuration.privileged = False
        configuration.container_create_kwargs = None
        configuration.registry_credentials = None
        configuration.command = COMMAND  # whatever a pool template an API user edited says
        # The run's own variables (PREFECT__FLOW_RUN_ID, ...), then the worker's PASSED (its
        # Prefect API, not a template's), then the flow: the image's retrain flow, loaded
        # from its entrypoint, so no deployment's pull steps run.
        own = {k: v for k, v in (configuration.env or {}).items() if k.startswith("PREFECT__")}
        passed = {k: environ[k] for k in PASSED if environ.get(k)}
        configuration.env = {**own, **passed, "PREFECT__FLOW_ENTRYPOINT": ENTRYPOINT}

    def describe(self) -> str:
        mounts = ", ".join(self.volumes) or "no volume"
        return f"image {self.image}, network {', '.join(self.networks)}, {mounts}"


def docker_client():
    """A Docker API client for DOCKER_HOST (or the default socket), or a one-line error."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise PipelineError(
            f"no Docker API at {where}: {str(exc).splitlines()[0][:200]} (start Docker, or "
            "`podman system service --time=0 unix:///run/podman/podman.sock` and set "
            "DOCKER_HOST=unix:///run/podman/podman.sock)"
        ) from None
    return client


def own_container(client: Any, hostname: str | None = None):
    """The container this process runs in (a container's hostname is its id), or None."""
    import docker

    try:
        return client.containers.get(hostname or socket.gethostname())
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        raise PipelineError(f"the Docker API: {str(exc).splitlines()[0][:200]}") from None


def flow_run_container(client: Any, environ: dict[str, str] | None = None) -> FlowRunContainer:
    """The worker's container's image, networks and read-only /datasets mount, or IMAGE_VAR
    and NETWORK_VAR where they are set (a worker outside any container must set both)."""
    environ = os.environ if environ is None else environ
    image, network = environ.get(IMAGE_VAR, "").strip(), environ.get(NETWORK_VAR, "").strip()
    me = None if image and network else own_container(client)
    if me is None and not (image and network):
        raise PipelineError(
            f"this worker runs in no container the Docker API knows: set {IMAGE_VAR} (the "
            f"project's image) and {NETWORK_VAR} (the network the servers are on)"
        )
    attrs = me.attrs if me is not None else {}
    image = image or attrs["Image"]  # its id: the worker's code, even once the tag moves
    networks = [network] if network else list(attrs["NetworkSettings"]["Networks"])
    volumes = [
        f"{m['Source']}:{DATASETS}:ro"
        for m in attrs.get("Mounts", [])
        if m.get("Destination") == DATASETS and m.get("Type") == "bind"
    ]
    try:
        client.images.get(image)
    except Exception:  # noqa: BLE001 - NotFound, or an API error naming the image
        raise PipelineError(f"image {image!r} is not on the Docker host: build it first") from None
    return FlowRunContainer(image=image, networks=networks, volumes=volumes)
