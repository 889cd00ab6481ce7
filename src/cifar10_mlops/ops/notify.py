"""Notifications from the retrain flow: a run that failed or crashed, and a new champion.

They go to a Prefect webhook notification block (`CustomWebhookNotificationBlock`) saved on the
Prefect server, `retrain-notify` unless RETRAIN_NOTIFY_BLOCK names another; without one, the
flow notifies nobody. The block POSTs JSON `{"subject": ..., "body": ...}` to its URL (a chat
webhook, an alerting service); save it once per server:

  python -m cifar10_mlops.ops.notify --url https://hooks.example/T0/B0/XYZ   # `make notify-webhook`

The flow POSTs itself, not through the block's own `notify`: it sends only to global unicast
addresses, checked for every address the host resolves to and again on each redirect (at most
MAX_REDIRECTS), so neither 100.64.0.0/10 (carrier NAT, where some clouds keep their metadata
service) nor an IPv4 address hidden in IPv6 (64:ff9b::/96, ::ffff:0:0/96, 6to4, Teredo)
passes. A receiver on the internal network needs RETRAIN_NOTIFY_ALLOW_PRIVATE=1 where the flow
runs: the block's own `allow_private_urls` is ignored, since any Prefect API user can change a
saved block. Logs name the webhook's host only: its URL is its secret.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import urllib.parse

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.prefect_server import check_prefect

BLOCK_ENV = "RETRAIN_NOTIFY_BLOCK"
DEFAULT_BLOCK = "retrain-notify"
ALLOW_PRIVATE_ENV = "RETRAIN_NOTIFY_ALLOW_PRIVATE"
MAX_REDIRECTS = 3
TIMEOUT = 10.0  # seconds for the webhook to answer
NAT64 = ipaddress.ip_network("64:ff9b::/96")


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
    request = block._build_request_args(body, subject)  # the block's templates and secrets
    host = urllib.parse.urlsplit(request["url"]).hostname
    try:
        post(request, allow_private=os.environ.get(ALLOW_PRIVATE_ENV) == "1")
    except Exception as exc:  # the webhook's own errors: named without its URL
        reason = exc if isinstance(exc, PipelineError) else type(exc).__name__
        logger.error("notification %r not sent to %s (block %s): %s", subject, host,
                     block_name(), reason)  # fmt: skip
        return False
    logger.info("notified %s through block %s: %s", host, block_name(), subject)
    return True


def post(request: dict, allow_private: bool) -> None:
    """Send the block's request, following at most MAX_REDIRECTS redirects, each checked."""
    import httpx

    request = dict(request)
    cookies = request.pop("cookies", None) or {}
    request["timeout"] = min(float(request.get("timeout") or TIMEOUT), TIMEOUT)
    headers = {"user-agent": "cifar10-mlops notifications"}
    with httpx.Client(headers=headers, cookies=cookies, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            if not allow_private:
                require_global(request["url"])
            response = client.request(**request)
            if not response.is_redirect:
                response.raise_for_status()
                return
            request["url"] = str(response.next_request.url)
    raise PipelineError(f"more than {MAX_REDIRECTS} redirects")


def require_global(url: str) -> None:
    """Raise unless every address `url`'s host resolves to is global unicast."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineError(f"not an http(s) URL: {parts.scheme}://")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PipelineError(f"{parts.hostname} does not resolve ({exc.strerror or exc})") from None
    for info in infos:
        if not global_unicast(info[4][0]):
            raise PipelineError(
                f"{parts.hostname} resolves to {info[4][0]}, not a global unicast address; "
                f"set {ALLOW_PRIVATE_ENV}=1 where the flow runs for an internal receiver"
            )


def global_unicast(address: str) -> bool:
    """Whether `address` reaches the public internet, and only it: no private, loopback,
    link-local, carrier-NAT, multicast or reserved address, none hidden in an IPv6 one."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return global_unicast(str(embedded))
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


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
