"""Serve the `retrain` flow as a scheduled deployment on the Prefect server at PREFECT_API_URL.

The schedule and the deployment's parameters come from params.yaml `retrain`. At most one run
of it runs at a time (DVC's repository lock would fail the second): the deployment's
concurrency limit is 1, and a run due while another runs waits in the queue.

  PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy   # `make deployment`
"""

from __future__ import annotations

import sys

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from cifar10_mlops.config import load_params
from cifar10_mlops.errors import PipelineError
from flows.retrain import PARAMS, check_prefect, retrain


def main() -> None:
    try:
        cfg = load_params(PARAMS).retrain
        if not PREFECT_API_URL.value():
            raise PipelineError(
                "PREFECT_API_URL is not set: a schedule needs a running Prefect server "
                "(make prefect-server, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
            )
        check_prefect()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    retrain.serve(
        name=cfg.deployment,
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        parameters={"force": cfg.force},
        global_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        limit=1,  # this process also starts at most one run at a time
        description=f"Retrain on {cfg.cron!r} ({cfg.timezone}), params.yaml `retrain`",
        tags=["cifar10", "retrain"],
    )


if __name__ == "__main__":
    main()
