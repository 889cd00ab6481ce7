"""The retrains that published datasets queue, de-duplicated and capped.

Each `cifar10.dataset.published` event makes the retrain deployment's trigger create a run
(flows/deploy.py), and the deployment runs one at a time, so the others wait. Anyone who may
emit events could queue retrains without end; two guards bound them:

- the trigger fires at most once per dataset digest (the event's resource id) in
  DEDUP_WINDOW: the same dataset published again meanwhile starts nothing;
- when a run starts, at most MAX_WAITING runs for published data may wait after it: the
  oldest wait on, newer ones are cancelled, saying why (the next scheduled retrain and the
  next publication still come). Scheduled runs (no `rev` parameter) are never touched.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

DEDUP_WINDOW = timedelta(hours=24)
MAX_WAITING = 2
WAITING = ("SCHEDULED", "PENDING")  # states of a run not started yet (AwaitingConcurrencySlot
# and Late are SCHEDULED)


def trim(client, deployment_id: UUID, own_id: UUID | None = None) -> list[UUID]:
    """Cancel the published-data runs of the deployment waiting beyond the oldest
    MAX_WAITING (not `own_id`); returns the ids cancelled. `client`: Prefect's sync client."""
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState,
        FlowRunFilterStateType,
    )  # fmt: skip
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    waiting = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in WAITING])
            )
        ),
    )
    published = sorted(
        (r for r in waiting if r.parameters.get("rev") and r.id != own_id),
        key=lambda r: r.created,
    )
    surplus = published[MAX_WAITING:]
    for run in surplus:
        message = (
            f"cancelled: {len(published)} retrains for published data were waiting, at most "
            f"{MAX_WAITING} may (cifar10_mlops.ops.backlog); publish again or wait for the "
            "schedule"
        )
        client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
    return [r.id for r in surplus]
