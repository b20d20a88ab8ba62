"""Bad input raises ValueError/TypeError naming the argument, before any kernel runs."""

import fusedconv
from fusedconv._abi import ext
import mlx.core as mx
import numpy as np
import pytest

F = mx.float32


def good(dtype=F, n=1, h=4, w=5, c=8, o=6):
    return dict(
        x=mx.zeros((n, h, w, c), dtype=dtype),
        weight=mx.zeros((o, 3, 3, c), dtype=dtype),
        bias=mx.zeros((o,), dtype=dtype),
        stats=mx.zeros((n, 4, 2), dtype=mx.float32),
        gamma=mx.ones((c,), dtype=dtype),
        beta=mx.zeros((c,), dtype=dtype),
        residual=mx.zeros((n, h, w, o), dtype=dtype),
    )


def call(**over):
    a = good()
    upsample = over.pop("upsample", 1)
    silu = over.pop("silu", True)
    norm = over.pop("norm", None)
    a.update(over)
    if norm is None:
        norm = (a["stats"], a["gamma"], a["beta"])
    return fusedconv.conv3x3(
        a["x"], a["weight"], a["bias"], norm=norm, silu=silu, upsample=upsample, residual=a["residual"]
    )


def test_good_call_runs():
    mx.eval(call())


@pytest.mark.parametrize(
    "over, exc, name",
    [
        (dict(x=mx.zeros((4, 5, 8))), ValueError, "x"),
        (dict(x=mx.zeros((1, 4, 5, 8, 1))), ValueError, "x"),
        (dict(x=mx.zeros((1, 0, 5, 8))), ValueError, "x"),
        (dict(x=mx.zeros((1, 4, 5, 8), dtype=mx.int32)), TypeError, "x"),
        (dict(x=np.zeros((1, 4, 5, 8), np.float32)), TypeError, "x"),
        (dict(weight=mx.zeros((6, 3, 3, 7))), ValueError, "weight"),
        (dict(weight=mx.zeros((6, 5, 5, 8))), ValueError, "weight"),
        (dict(weight=mx.zeros((6, 8, 3, 3))), ValueError, "weight"),  # OIHW instead of OHWI
        (dict(weight=mx.zeros((6, 3, 3, 8), dtype=mx.float16)), TypeError, "weight"),
        (dict(bias=mx.zeros((5,))), ValueError, "bias"),
        (dict(bias=mx.zeros((6,), dtype=mx.bfloat16)), TypeError, "bias"),
        (dict(bias=[0.0] * 6), TypeError, "bias"),
        (dict(residual=mx.zeros((1, 8, 10, 6))), ValueError, "residual"),
        (dict(residual=mx.zeros((1, 4, 5, 7))), ValueError, "residual"),
        (dict(residual=mx.zeros((1, 4, 5, 6), dtype=mx.float16)), TypeError, "residual"),
        (dict(stats=mx.zeros((1, 3, 2))), ValueError, "stats"),  # 3 groups do not divide 8
        (dict(stats=mx.zeros((2, 4, 2))), ValueError, "stats"),
        (dict(stats=mx.zeros((1, 4, 2), dtype=mx.float16)), TypeError, "stats"),
        (dict(gamma=mx.ones((7,))), ValueError, "gamma"),
        (dict(beta=mx.zeros((8, 1))), ValueError, "beta"),
        (dict(gamma=mx.ones((8,), dtype=mx.bfloat16)), TypeError, "gamma"),
        (dict(norm=(mx.zeros((1, 4, 2)), mx.ones((8,)))), TypeError, "norm"),
        (dict(norm="groupnorm"), TypeError, "norm"),
        (dict(upsample=3), ValueError, "upsample"),
        (dict(upsample=0), ValueError, "upsample"),
        (dict(upsample=2.0), TypeError, "upsample"),
        (dict(silu=1), TypeError, "silu"),
    ],
)
def test_conv3x3_rejects(over, exc, name):
    with pytest.raises(exc, match=name):
        call(**over)


@pytest.mark.parametrize(
    "shortcut, exc, name",
    [
        ((mx.zeros((1, 4, 5, 3)),), TypeError, "shortcut"),
        ((mx.zeros((1, 4, 6, 3)), mx.zeros((6, 1, 1, 3))), ValueError, "shortcut x"),
        ((mx.zeros((1, 4, 5, 3)), mx.zeros((6, 3))), ValueError, "shortcut weight"),
        ((mx.zeros((1, 4, 5, 3)), mx.zeros((6, 1, 1, 4))), ValueError, "shortcut weight"),
        ((mx.zeros((1, 4, 5, 3)), mx.zeros((6, 1, 1, 3)), mx.zeros((5,))), ValueError, "shortcut bias"),
        ((mx.zeros((1, 4, 5, 3), dtype=mx.float16), mx.zeros((6, 1, 1, 3))), TypeError, "shortcut x"),
        ((mx.zeros((1, 4, 5, 3)), "w"), TypeError, "shortcut weight"),
    ],
)
def test_shortcut_rejects(shortcut, exc, name):
    a = good()
    with pytest.raises(exc, match=name):
        fusedconv.conv3x3(a["x"], a["weight"], shortcut=shortcut)


def test_shortcut_and_residual_are_exclusive():
    a = good()
    with pytest.raises(ValueError, match="shortcut"):
        fusedconv.conv3x3(a["x"], a["weight"], residual=a["residual"],
                          shortcut=(mx.zeros((1, 4, 5, 3)), mx.zeros((6, 1, 1, 3))))


def test_residual_shape_follows_upsample():
    a = good()
    with pytest.raises(ValueError, match="residual"):
        fusedconv.conv3x3(a["x"], a["weight"], residual=a["residual"], upsample=2)
    ok = fusedconv.conv3x3(a["x"], a["weight"], residual=mx.zeros((1, 8, 10, 6)), upsample=2)
    assert ok.shape == (1, 8, 10, 6)


@pytest.mark.parametrize(
    "x, groups, eps, exc, name",
    [
        (mx.zeros((1, 4, 4, 8)), 3, 1e-6, ValueError, "groups"),
        (mx.zeros((1, 4, 4, 8)), 0, 1e-6, ValueError, "groups"),
        (mx.zeros((1, 4, 4, 8)), 2.0, 1e-6, TypeError, "groups"),
        (mx.zeros((1, 4, 4, 8)), 2, -1.0, ValueError, "eps"),
        (mx.zeros((1, 4, 4, 8)), 2, float("nan"), ValueError, "eps"),
        (mx.zeros((1, 4, 4, 8)), 2, "1e-6", TypeError, "eps"),
        (mx.zeros((4, 4, 8)), 2, 1e-6, ValueError, "x"),
        (mx.zeros((1, 4, 4, 8), dtype=mx.uint8), 2, 1e-6, TypeError, "x"),
        ([[1.0]], 1, 1e-6, TypeError, "x"),
    ],
)
def test_group_norm_stats_rejects(x, groups, eps, exc, name):
    with pytest.raises(exc, match=name):
        fusedconv.group_norm_stats(x, groups, eps)


def test_gpu_stream_without_gpu_backend_is_an_error_not_a_crash():
    if mx.metal.is_available() or mx.cuda.is_available():
        pytest.skip("this build has a GPU backend (tests/test_gpu.py runs the op there)")
    a = good()
    with pytest.raises((RuntimeError, ValueError)):
        mx.eval(fusedconv.conv3x3(a["x"], a["weight"], stream=mx.gpu))
    with pytest.raises((RuntimeError, ValueError)):
        ext.conv3x3_kernel_family(mx.gpu)
    assert ext.conv3x3_kernel_family(mx.cpu) == "cpu"
    assert not fusedconv.ops.composition_is_faster(512, stream=mx.cpu)
