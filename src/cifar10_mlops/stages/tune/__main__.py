"""`python -m cifar10_mlops.stages.tune`: the `tune` stage, or with --worker a distributed
worker."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from cifar10_mlops.core.settings import load_params
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.stage import run_stage, stage_parser
from cifar10_mlops.stages.tune import __doc__ as DOC
from cifar10_mlops.stages.tune.distributed import run_worker
from cifar10_mlops.stages.tune.oracle import KT_ENV, kt_chief, kt_distributed
from cifar10_mlops.stages.tune.search import run_search, write_disabled


def check_loopback(address: str) -> None:
    """Keras Tuner's oracle serves gRPC without authentication: the chief may listen on a
    loopback address only, reached from elsewhere through a tunnel that authenticates."""
    try:
        loopback = address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PipelineError(
            f"KERASTUNER_ORACLE_IP={address}: Keras Tuner's oracle has no authentication, so "
            "the chief listens on 127.0.0.1 only (reach it through an SSH tunnel), or run the "
            "search's trials on a Prefect work pool: make search-pool"
        )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        DOC, "python -m cifar10_mlops.stages.tune", data="prepare's output folder",
        state="resumable search state folder",
    )  # fmt: skip
    parser.add_argument("--best", type=Path, help="where to write best_hparams.json")
    parser.add_argument("--reports", type=Path, help="folder for trials.csv etc.")
    parser.add_argument(
        "--worker", action="store_true", help="run trials for a distributed search's chief"
    )
    parser.add_argument(
        "--loop", action="store_true", help="worker: join the next search when one ends"
    )
    parser.add_argument(
        "--wait", type=float, help="worker: seconds to wait for a search (default: no limit)"
    )
    args = parser.parse_args(argv)
    for name in KT_ENV:  # an empty value (as docker compose passes an unset one) means unset
        if name in os.environ and not os.environ[name].strip():
            del os.environ[name]
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise PipelineError(f"KERASTUNER_ORACLE_PORT: expected a port 1-65535, got {port!r}")
    if kt_chief():
        check_loopback(os.environ["KERASTUNER_ORACLE_IP"])
    if args.worker:
        run_worker(data=args.data, state_root=args.state, loop=args.loop, wait=args.wait)
        return
    if args.best is None or args.reports is None:
        parser.error("--best and --reports are required, except with --worker")
    if kt_distributed() and not kt_chief():
        raise PipelineError(
            f"KERASTUNER_TUNER_ID={os.environ.get('KERASTUNER_TUNER_ID')} makes this a "
            "worker: run it with --worker, or set KERASTUNER_TUNER_ID=chief for the stage"
        )
    params = load_params(args.params)
    if not params.tune.enabled:
        write_disabled(args.best, args.reports)
        return
    run_search(
        params, data=args.data, state_root=args.state, best_path=args.best, reports=args.reports
    )


if __name__ == "__main__":
    run_stage(main)
