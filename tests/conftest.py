import os
import sys

import mlx.core as mx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fusedconv._abi import ext  # noqa: E402

ISAS = ext.cpu_isas().split(",")


@pytest.fixture(params=ISAS)
def cpu_isa(request, monkeypatch):
    """Runs a test once per CPU kernel instruction set this machine supports."""
    monkeypatch.setenv("FUSEDCONV_CPU_ISA", request.param)
    assert ext.cpu_isa() == request.param
    return request.param


@pytest.fixture(autouse=True)
def _cpu_default():
    # The CPU backend is what these tests exercise; Metal has its own suite.
    with mx.stream(mx.cpu):
        yield
