import os
import sys

# MLX's CUDA build runs float32 matmuls and convolutions in TF32 (10-bit mantissa) unless
# told otherwise; the float32 tolerances here follow from float32 arithmetic. Read once,
# at MLX's first such op, so it is set before mlx is imported.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import pytest  # noqa: E402

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
