"""The `cifar10-mlops` command (cli.py): its usage, and what it answers to a command it does not
have. The commands themselves are tested in the files of their modules (test_predict.py,
test_server.py, test_checkout.py, test_verify.py, test_publish.py)."""

import pytest

from cifar10_mlops.cli import COMMANDS, main
from helpers import cli


def test_unknown_command_prints_usage(tmp_path):
    result = cli("train", cwd=tmp_path)
    assert result.returncode == 2 and "cifar10-mlops predict" in result.stderr


def test_help_names_every_command_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().err
    for command in COMMANDS:
        assert f"cifar10-mlops {command} " in usage, command
