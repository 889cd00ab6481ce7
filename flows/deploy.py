"""Deploy the scheduled `retrain` flow on the Prefect server at PREFECT_API_URL.

The schedule and the deployment's parameters come from params.yaml `retrain`. A second trigger
starts a run when a new dataset is published: `cifar10-mlops publish-data` emits the event
`cifar10.dataset.published`, and the run fast-forwards to the commit it names (`rev`) and
retrains on it. A third, off by default (params.yaml `monitor.retrain_on_drift`), starts a
run when the drift test finds drift (flows/drift.py emits `cifar10.drift.detected`), at most
one a day. At most one run of it runs at a time (DVC's repository lock would fail the
second, and two workers would register against one champion): the deployment's concurrency
limit is 1, and a run due while another runs waits in the queue.

Two ways to run it:
- served by this process, in this checkout (`make deployment`, part of `make services`):
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy
- on a Prefect work pool (Prefect's production path): the deployment goes to the process
  pool NAME, created if missing, and any worker of that pool runs it in its own checkout
  (cifar10_mlops.ops.pool; `make worker POOL=NAME` on each machine):
    PREFECT_API_URL=... python -m flows.deploy --pool cpu          # `make deploy-pool`
- on a docker work pool (`--type docker`, compose's `docker-worker`): the deployment
  `retrain/<name>-docker` runs each flow run in a fresh container of the project's image
  (cifar10_mlops.ops.containers). Each has a work tree of its own, so CONTAINER_RUNS run at
  once; their `register` stages take turns (ops/pool.py REGISTER_LIMIT, a global concurrency
  limit of one slot), so each compares its model with the champion the one before it left.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from cifar10_mlops.ops import backlog, publish
from cifar10_mlops.core.validation import checked, valid_name
from cifar10_mlops.core.settings import load_params
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.ops.prefect_server import check_prefect
from flows.drift import EVENT as DRIFT_EVENT
from cifar10_mlops.ops.pool import POOL_TYPES, ensure_pool, ensure_register_limit
from flows.retrain import PARAMS, retrain

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
CONTAINER_RUNS = ConcurrencyLimitConfig(
    limit=2, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
)


def on_new_data() -> DeploymentEventTrigger:
    """A run for each dataset `publish-data` announces, at the commit that records it."""
    return DeploymentEventTrigger(
        name="retrain on a published dataset",
        expect={publish.EVENT},
        match={"prefect.resource.id": "cifar10.dataset.*"},
        # once per dataset digest (the resource id) in the window: fires on the first event,
        # then ignores the same digest until the window ends (ops/backlog.py)
        for_each={"prefect.resource.id"},
        within=backlog.DEDUP_WINDOW,
        parameters={"rev": "{{ event.payload.rev }}", "force": True},
    )


def on_drift() -> DeploymentEventTrigger:
    """A run when the drift test finds the served model's inputs drifted (flows/drift.py), at
    most one per DEDUP_WINDOW however many hourly tests find it again."""
    return DeploymentEventTrigger(
        name="retrain on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": "cifar10.model.*"},
        for_each={"prefect.resource.id"},
        within=backlog.DEDUP_WINDOW,
        parameters={"force": True},
    )


def deployment_settings() -> dict:
    """What both ways share: name, schedule, triggers, parameters, description and tags. The
    drift trigger only when params.yaml `monitor.retrain_on_drift` is true."""
    params = load_params(PARAMS)
    cfg = params.retrain
    on = " and on drift (cifar10.drift.detected)" if params.monitor.retrain_on_drift else ""
    return {
        "name": cfg.deployment,
        "schedules": [Cron(cfg.cron, timezone=cfg.timezone)],
        "triggers": [on_new_data(), *([on_drift()] if params.monitor.retrain_on_drift else [])],
        "parameters": {"force": cfg.force},
        "description": (
            f"Retrain on {cfg.cron!r} ({cfg.timezone}), params.yaml `retrain`, and on each "
            f"dataset published ({publish.EVENT}){on}"
        ),
        "tags": ["cifar10", "retrain"],
    }


CRASH_AUTOMATION = "cifar10-mlops: crash retrains that stopped beating"
ENDED = ("Completed", "Failed", "Cancelled", "Crashed")
WATCHED = ["retrain", "tune-trial"]  # the flows whose runs workers run


def ensure_crash_detection() -> None:
    """The automation that marks a retrain or a search's trial CRASHED when its heartbeats
    stop (a worker or its machine killed mid-run): three heartbeats missed
    (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 180 s by default). That frees the retrain
    deployment's one slot for the next run, and sends a trial to another worker
    (stages/tune/pool_search.py). Made once per server, or updated when it changed."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import get_current_settings

    within = timedelta(seconds=3 * get_current_settings().flows.heartbeat_frequency)
    wanted = Automation(
        name=CRASH_AUTOMATION,
        description="Marks a retrain or a trial CRASHED after three missed heartbeats "
        "(flows/deploy.py)",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in ENDED)},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": WATCHED},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within.total_seconds():.0f} s: its worker stopped",
            )
        ],
    )
    try:
        found = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:
        found = None
    if found is None:
        wanted.create()
    elif (found.trigger.within, found.trigger.match_related) != (
        within,
        wanted.trigger.match_related,
    ):
        found.trigger = wanted.trigger
        found.actions = wanted.actions
        found.update()


def deploy_to_pool(pool: str, pool_type: str = "process") -> None:
    from cifar10_mlops.ops.pool import ENTRYPOINT, WorkerCheckout

    ensure_pool(pool, pool_type)
    ensure_crash_detection()
    ensure_register_limit()
    settings = deployment_settings()
    if pool_type == "docker":
        # No pull step: a container runs the flow from the image's own /app (this process's
        # folder, as the image's worker runs it), and the worker picks the image.
        settings["name"] = f"{settings['name']}-docker"
        # no retrain per published dataset: it names a commit, and a container has no git
        # checkout to move (flows/retrain.py `rev`); the process pool's workers take those
        published = on_new_data().name
        settings["triggers"] = [t for t in settings["triggers"] if t.name != published]
        deployment = retrain.to_deployment(concurrency_limit=CONTAINER_RUNS, **settings)
        deployment_id = deployment.apply(work_pool_name=pool)
        where = f"a docker worker (python -m flows.worker --pool {pool} --type docker)"
    else:
        deployment_id = retrain.from_source(WorkerCheckout(str(Path.cwd())), ENTRYPOINT).deploy(
            work_pool_name=pool, concurrency_limit=ONE_AT_A_TIME, ignore_warnings=True,
            print_next_steps=False, **settings,
        )  # fmt: skip
        where = f"a worker in each checkout that should run it (make worker POOL={pool})"
    print(
        f"deployment retrain/{settings['name']} ({deployment_id}) on {pool_type} work pool "
        f"{pool!r}: start {where}"
    )


def serve() -> None:
    ensure_crash_detection()
    retrain.serve(
        global_limit=ONE_AT_A_TIME,
        limit=1,  # this process also starts at most one run at a time
        **deployment_settings(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pool", help="deploy to this work pool (created if missing) instead of serving"
    )
    parser.add_argument(
        "--type", dest="pool_type", choices=POOL_TYPES, default="process",
        help="the pool's type: process (workers' checkouts, default) or docker (containers)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.pool is not None:
            checked("--pool", valid_name, args.pool)
        deployment_settings()  # params.yaml's `retrain` is valid
        if not PREFECT_API_URL.value():
            raise PipelineError(
                "PREFECT_API_URL is not set: a schedule needs a running Prefect server "
                "(make prefect-server, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
            )
        check_prefect()
        if args.pool is not None:
            deploy_to_pool(args.pool, args.pool_type)
            return
    except (PipelineError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    serve()


if __name__ == "__main__":
    main()
