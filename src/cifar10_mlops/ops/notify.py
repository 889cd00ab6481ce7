"""Notifications from the retrain flow: a run that failed or crashed, and a new champion.

They go to a Prefect webhook notification block (`CustomWebhookNotificationBlock`) saved on the
Prefect server, `retrain-notify` unless RETRAIN_NOTIFY_BLOCK names another; without one, the
flow notifies nobody. The block POSTs JSON `{"subject": ..., "body": ...}` to its URL (a chat
webhook, an alerting service); save it once per server:

  python -m cifar10_mlops.ops.notify --url https://hooks.example/T0/B0/XYZ   # `make notify-webhook`

Prefect refuses private addresses (127.0.0.1, 10.x, ...) for webhooks unless
`--allow-private-url` says the receiver is meant to be on the internal network.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.prefect_server import check_prefect

BLOCK_ENV = "RETRAIN_NOTIFY_BLOCK"
DEFAULT_BLOCK = "retrain-notify"


def block_name() -> str:
    return os.environ.get(BLOCK_ENV, "").strip() or DEFAULT_BLOCK


def send(subject: str, body: str) -> bool:
    """Notify through the block; False when none is saved. A notification that cannot be sent
    is logged, never fails the run it reports on."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    logger = _logger()
    try:
        block = CustomWebhookNotificationBlock.load(block_name())
    except ValueError:  # no such block: notifications are not set up
        return False
    except Exception as exc:  # the server's errors: logged, the run goes on
        logger.error("notification %r not sent: block %s: %s", subject, block_name(), exc)
        return False
    try:
        block.notify(body=body, subject=subject)
    except Exception as exc:  # the webhook's own errors (HTTP, DNS, refused private URL)
        logger.error("notification %r not sent through block %s: %s", subject, block_name(), exc)
        return False
    logger.info("notified through block %s: %s", block_name(), subject)
    return True


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def on_failure(flow, flow_run, state) -> None:
    """Flow hook for a failed or crashed run."""
    send(
        f"retrain {flow_run.name} {state.name.lower()}",
        f"Flow run {flow_run.name} ({flow_run.id}) ended {state.name}: {state.message or ''}",
    )


def save(url: str, allow_private: bool) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from prefect.settings import PREFECT_API_URL

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineError(f"--url {url!r}: expected an http(s) URL")
    if not PREFECT_API_URL.value():
        raise PipelineError("PREFECT_API_URL is not set: the block is saved on the Prefect server")
    check_prefect()
    block = CustomWebhookNotificationBlock(
        name="cifar10-mlops retrain",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=allow_private,
    )
    block.save(block_name(), overwrite=True)
    return block_name()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save the retrain flow's webhook block")
    parser.add_argument("--url", required=True, help="where notifications are POSTed")
    parser.add_argument(
        "--allow-private-url", action="store_true",
        help="allow a receiver on a private address (127.0.0.1, 10.x, ...)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        name = save(args.url, args.allow_private_url)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    host = urllib.parse.urlsplit(args.url).hostname
    print(f"saved webhook block {name!r}: retrain notifications go to {host}")


if __name__ == "__main__":
    main()
