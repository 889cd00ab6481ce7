"""The `cifar10-mlops` command: what a user runs outside the pipeline's stages.

cifar10-mlops predict IMAGE|FOLDER ... [--model URI] [--format table|json]
cifar10-mlops request IMAGE|FOLDER ... > body.json   # for curl against the served model
cifar10-mlops serve [--model URI] [--host 127.0.0.1] [--port 5001]   # MLflow's, with limits
cifar10-mlops drift --sample-dir DIR | --window FILE [--model URI]   # exit 3: drift found
cifar10-mlops checkout MODEL_URI [--remote NAME] [--force]   # the pipeline state of a version
cifar10-mlops verify MODEL_URI [--tune] [--remote NAME]   # rebuild its weights, compare them
cifar10-mlops publish-data ARCHIVE [--checksum sha256:HEX]   # a new dataset version, announced
cifar10-mlops relocate-store [--store mlruns/mlflow.db]   # after moving the checkout
"""

from __future__ import annotations

import sys

from cifar10_mlops.serving import predict
from cifar10_mlops.core.stage import run_stage


def _serve(argv: list[str]) -> None:
    from cifar10_mlops.serving import (
        server as serve,
    )  # imports MLflow, a second: only for this command

    serve.main(argv)


def _drift(argv: list[str]) -> None:
    from cifar10_mlops.monitoring import check  # imports MLflow and TensorFlow

    check.main(argv)


def _checkout(argv: list[str]) -> None:
    from cifar10_mlops.ops import checkout  # imports MLflow

    checkout.main(argv)


def _verify(argv: list[str]) -> None:
    from cifar10_mlops.ops import verify  # imports MLflow

    verify.main(argv)


def _publish(argv: list[str]) -> None:
    from cifar10_mlops.ops import publish  # imports DVC's and Prefect's clients

    publish.main(argv)


def _relocate(argv: list[str]) -> None:
    from cifar10_mlops.ops import relocate

    relocate.main(argv)


COMMANDS = {
    "predict": predict.main, "request": predict.request_main, "serve": _serve,
    "drift": _drift, "checkout": _checkout, "verify": _verify, "publish-data": _publish,
    "relocate-store": _relocate,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = COMMANDS[argv[0]], argv[1:]
    run_stage(lambda: command(rest))


if __name__ == "__main__":
    main()
