"""Run-time choice of the CPU kernel build (FUSEDCONV_CPU_ISA)."""

import fusedconv
import mlx.core as mx
import pytest
from fusedconv._abi import ext


def test_default_is_fastest_measured_build(monkeypatch):
    monkeypatch.delenv("FUSEDCONV_CPU_ISA", raising=False)
    isas = ext.cpu_isas().split(",")
    assert isas[0] == "generic"
    # avx512bf16 (vdpbf16ps) runs only when asked for: slower than the f32 FMA
    # build on the Xeon measured (README, Backends).
    assert ext.cpu_isa() == [i for i in isas if i != "avx512bf16"][-1]


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
