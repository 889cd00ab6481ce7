"""Hyperband with each trial a flow run on a Prefect work pool.

  PREFECT_API_URL=... MLFLOW_TRACKING_URI=http://... python -m flows.search --pool cpu \
      [--parallel 2] [--retries 2]                                  # `make search-pool`

deploys the trial flow (flows/trial.py) to the process pool as `tune-trial/trials`, then runs
the `tune-search` flow in this process: keras-tuner's Hyperband oracle here, each trial sent
with `run_deployment` to whichever worker of the pool is free (`make worker POOL=cpu` on each
machine), at most `parallel` at once. The trial flow runs are subflows of the search's, and
each trial an MLflow child run of the search's run. The outputs are the `tune` stage's:
models/best_hparams.json and reports/tune/, so `dvc commit tune` adopts them
(docs/scale-out.md). A trial whose worker is lost runs again (stages/tune/pool_search.py);
the search itself resumes from models/tuner-pool/ when rerun with the same settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from uuid import UUID

from prefect import flow

from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.core.validation import checked, valid_name
from cifar10_mlops.ops.pool import TRIAL_ENTRYPOINT
from cifar10_mlops.ops.prefect_server import require_team_servers

PARALLEL, RETRIES, POLL_SECONDS = 2, 2, 2.0  # the flow's and the command's defaults
TRIALS = "trials"  # the trial flow's deployment: tune-trial/trials
ENTRYPOINT = TRIAL_ENTRYPOINT
DATA, STATE = Path("data/prepared"), Path("models/tuner-pool")
BEST, REPORTS = Path("models/best_hparams.json"), Path("reports/tune")


class DeploymentLauncher:
    """Trials as flow runs of tune-trial/trials, subflows of the running search flow."""

    def __init__(self):
        from prefect import get_client

        self.client = get_client(sync_client=True)

    def submit(self, spec: dict) -> str:
        from prefect.deployments import run_deployment

        run = run_deployment(
            f"tune-trial/{TRIALS}", parameters={"spec": spec}, timeout=0,
            flow_run_name=f"trial-{spec['trial_id']}-attempt-{spec['attempt']}",
            idempotency_key=spec["run_id"],  # one flow run per attempt, however often sent
            tags=["cifar10", "tune-trial", f"search-{spec['search_id']}"],
        )  # fmt: skip
        return str(run.id)

    def state(self, handle: str) -> tuple[str, str]:
        state = self.client.read_flow_run(UUID(handle)).state
        return state.type.value, (state.message or "")[:300]

    def cancel(self, handle: str) -> None:
        """CANCELLING, which the worker running it acts on (it stops the process); a run not
        started yet is CANCELLED at once."""
        from prefect.states import Cancelled, Cancelling

        run = self.client.read_flow_run(UUID(handle))
        if run.state.is_final():
            return
        stop = Cancelled if run.state.is_scheduled() else Cancelling
        self.client.set_flow_run_state(run.id, stop(message="its search stopped"), force=True)


@flow(name="tune-search", log_prints=True)
def search(
    parallel: int = PARALLEL, retries: int = RETRIES, poll_seconds: float = POLL_SECONDS
) -> dict:
    """Hyperband over params.yaml `tune.space`, `parallel` trials at once on the work pool;
    a lost trial runs at most `retries` more times."""
    if not 1 <= parallel <= 64 or not 0 <= retries <= 5 or not 0.1 <= poll_seconds <= 60:
        raise ConfigError("search: parallel must be 1-64, retries 0-5, poll_seconds 0.1-60")
    from cifar10_mlops.stages.tune.pool_search import PoolSearch  # TensorFlow: not for --help
    from cifar10_mlops.stages.tune.search import write_disabled

    params = load_params(PARAMS_FILE)
    if not params.tune.enabled:
        write_disabled(BEST, REPORTS)
        return {"enabled": False}
    runner = PoolSearch(params, data=DATA, state_root=STATE, launcher=DeploymentLauncher(),
                        parallel=parallel, retries=retries, poll=poll_seconds)  # fmt: skip
    return runner.run(BEST, REPORTS)


def deploy_trials(pool: str) -> None:
    """The trial flow on the process pool `pool` (created if missing, its template pinned),
    run by its workers in their checkouts; crash detection covers its runs."""
    from cifar10_mlops.ops.pool import WorkerCheckout, ensure_pool
    from flows.deploy import ensure_crash_detection
    from flows.trial import tune_trial

    ensure_pool(pool)
    ensure_crash_detection()
    tune_trial.from_source(WorkerCheckout(str(Path.cwd())), ENTRYPOINT).deploy(
        name=TRIALS, work_pool_name=pool, ignore_warnings=True, print_next_steps=False,
        description="One Hyperband trial of a work-pool search (flows/search.py)",
        tags=["cifar10", "tune-trial"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="cpu", help="the process work pool (default cpu)")
    parser.add_argument("--parallel", type=int, default=PARALLEL, help="trials at once (2)")
    parser.add_argument("--retries", type=int, default=RETRIES, help="reruns of a lost trial (2)")
    args = parser.parse_args(argv)
    try:
        checked("--pool", valid_name, args.pool)
        if not 1 <= args.parallel <= 64 or not 0 <= args.retries <= 5:
            raise ConfigError("--parallel must be 1-64 and --retries 0-5")
        load_params(PARAMS_FILE)
        require_team_servers(
            "trials run on a Prefect server's work pool",
            "trials on other machines log their runs and checkpoints there",
        )
        if not (DATA / "manifest.json").is_file():
            raise PipelineError(f"no {DATA}: run `dvc repro prepare` (or `make pull`) first")
        deploy_trials(args.pool)
    except (PipelineError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    state = search(parallel=args.parallel, retries=args.retries, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
