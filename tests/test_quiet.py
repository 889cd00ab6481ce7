"""Framework noise hidden from a command's output (core/quiet.py), unless something
unexpected fails: then what it hid is shown."""

import os

import pytest

from cifar10_mlops.core import quiet
from cifar10_mlops.core.errors import PipelineError


def test_what_quiet_hid_is_shown_when_something_unexpected_fails(capfd):
    with pytest.raises(RuntimeError), quiet.quiet():
        os.write(2, b"what the C++ code said\n")
        raise RuntimeError("the model would not load")
    assert capfd.readouterr().err == "what the C++ code said\n"
    with pytest.raises(PipelineError), quiet.quiet():  # its one line says enough
        os.write(2, b"noise\n")
        raise PipelineError("no champion yet")
    assert capfd.readouterr().err == ""
