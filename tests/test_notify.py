"""Saving the retrain flow's webhook block (ops/notify.py): what `make notify-webhook` refuses
before it talks to a server, and the block's name. A failed run and a new champion announced
through a real block are tested in test_flows.py and test_deploy.py."""

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from cifar10_mlops.ops import notify
from servers import webhook_receiver


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "hooks.example/x", "https://"])
def test_a_url_that_is_not_http_is_refused_in_one_line(url, capsys):
    with pytest.raises(SystemExit) as exited:
        notify.main(["--url", url])
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"error: --url {url!r}: expected an http(s) URL\n"


def test_without_a_prefect_server_to_save_it_on_nothing_is_saved(capsys):
    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(SystemExit):
        notify.main(["--url", "https://hooks.example/T0/B0/XYZ"])
    assert "PREFECT_API_URL is not set: the block is saved on the Prefect server" in (
        capsys.readouterr().err
    )


def test_the_block_is_the_one_retrain_notify_block_names(monkeypatch):
    monkeypatch.setenv(notify.BLOCK_ENV, "  ")
    assert notify.block_name() == "retrain-notify"
    monkeypatch.setenv(notify.BLOCK_ENV, "team-alerts")
    assert notify.block_name() == "team-alerts"


@pytest.mark.parametrize(
    "address, reachable",
    [("8.8.8.8", True), ("2001:4860:4860::8888", True), ("64:ff9b::808:808", True),
     ("100.64.0.1", False), ("100.127.255.254", False), ("10.1.2.3", False),
     ("127.0.0.1", False), ("169.254.169.254", False), ("224.0.0.1", False),
     ("64:ff9b::a9fe:a9fe", False), ("::ffff:10.0.0.1", False), ("2002:a00:1::", False),
     ("fe80::1%eth0", False), ("ff02::1", False), ("::1", False)],
)  # fmt: skip
def test_only_global_unicast_addresses_receive_notifications(address, reachable):
    """Carrier NAT (where some clouds keep metadata) and IPv4 inside IPv6 are not global."""
    assert notify.global_unicast(address) is reachable


def test_an_internal_receiver_is_refused_whatever_the_saved_block_says(monkeypatch):
    """Any Prefect API user can set a saved block's allow_private_urls; only the flow's own
    environment lets notifications reach the internal network."""
    import logging

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    records = []  # what the module logs, whatever handlers logging has elsewhere
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(notify.__name__)
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, handler])  # restored afterwards
    monkeypatch.setattr(logger, "level", logging.INFO)
    with webhook_receiver() as (hook, received):
        block = CustomWebhookNotificationBlock(
            name="t", url=f"{hook}/T0/B0/secret-token", allow_private_urls=True,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        )  # fmt: skip
        monkeypatch.setattr(CustomWebhookNotificationBlock, "load", lambda name: block)
        monkeypatch.delenv(notify.ALLOW_PRIVATE_ENV, raising=False)
        assert notify.send("retrain failed", "details") is False and received == []
        assert "127.0.0.1 resolves to 127.0.0.1, not a global unicast address" in records[-1]
        monkeypatch.setenv(notify.ALLOW_PRIVATE_ENV, "1")
        assert notify.send("retrain failed", "details") is True
    assert received == [{"subject": "retrain failed", "body": "details"}]
    assert records[-1].startswith("notified 127.0.0.1 through block retrain-notify")
    assert not [r for r in records if "secret-token" in r]  # the URL is the webhook's secret


def test_each_redirect_is_checked_again(monkeypatch):
    import http.server
    import threading

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307 if self.path != "/last" else 204)
            self.send_header("Location", "/last")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    checked, real = [], notify.require_global
    monkeypatch.setattr(notify, "global_unicast", lambda address: True)  # 127.0.0.1 plays public
    monkeypatch.setattr(notify, "require_global", lambda url: (checked.append(url), real(url)))
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        notify.post({"method": "POST", "url": f"{base}/first", "json": {}}, allow_private=False)
    finally:
        server.shutdown()
    assert checked == [f"{base}/first", f"{base}/last"]
