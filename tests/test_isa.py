"""Run-time choice of the CPU kernel build (FUSEDCONV_CPU_ISA)."""

import fusedconv
import mlx.core as mx
import pytest
from fusedconv._abi import ext


def test_default_is_the_fastest_build_measured_on_this_cpu(monkeypatch):
    """The calibration times every SIMD build this CPU runs (the portable one only where there
    is none) and the default is the fastest, an earlier build needing a 10% lead."""
    monkeypatch.delenv("FUSEDCONV_CPU_ISA", raising=False)
    isas = ext.cpu_isas().split(",")
    assert isas[0] == "generic"
    timings = ext.cpu_isa_timings()
    assert list(timings) == (isas[1:] if len(isas) > 1 else isas)
    assert all(0 < t < 1.0 for t in timings.values())
    best = None
    for name, t in reversed(timings.items()):
        if best is None or t < 0.9 * timings[best]:
            best = name
    assert ext.cpu_isa() == best


@pytest.mark.parametrize("name", ["avx-512", "neon", "AVX2"])
def test_unknown_build_is_a_value_error(monkeypatch, name):
    monkeypatch.setenv("FUSEDCONV_CPU_ISA", name)
    with pytest.raises(ValueError, match="FUSEDCONV_CPU_ISA"):
        ext.cpu_isa()
    x = mx.ones((1, 4, 4, 8))
    w = mx.ones((8, 3, 3, 8))
    with pytest.raises(ValueError, match="FUSEDCONV_CPU_ISA"):
        mx.eval(fusedconv.conv3x3(x, w))
    with pytest.raises(ValueError, match="FUSEDCONV_CPU_ISA"):
        mx.eval(fusedconv.linear(mx.ones((4, 8)), mx.ones((8, 8))))
