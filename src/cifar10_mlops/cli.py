"""The `cifar10-mlops` command: what a user runs outside the pipeline's stages.

cifar10-mlops predict IMAGE|FOLDER ... [--model URI] [--format table|json]
cifar10-mlops request IMAGE|FOLDER ... > body.json   # for curl against `mlflow models serve`
"""

from __future__ import annotations

import sys

from cifar10_mlops import predict
from cifar10_mlops.stage import run_stage

COMMANDS = {"predict": predict.main, "request": predict.request_main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = COMMANDS[argv[0]], argv[1:]
    run_stage(lambda: command(rest))


if __name__ == "__main__":
    main()
