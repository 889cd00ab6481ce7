"""Saving the retrain flow's webhook block (ops/notify.py): what `make notify-webhook` refuses
before it talks to a server, and the block's name. A failed run and a new champion announced
through a real block are tested in test_flows.py and test_deploy.py."""

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from cifar10_mlops.ops import notify


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
