"""conv3x3 against the mlx.nn composition, over random shapes and every option."""

import fusedconv
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    PARITY_TOL_F32_REF,
    PARITY_TOL_SAME_DTYPE,
    UNIT_ROUNDOFF,
    normalized_error,
    reference_activation,
    reference_conv3x3,
)

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def make_case(seed, n, h, w, c, o, groups, dtype, *, norm, bias, residual, upsample, mean=0.0, shortcut_c=0):
    rng = np.random.default_rng(seed)
    arr = lambda *shape, scale=1.0, loc=0.0: mx.array(  # noqa: E731
        (rng.standard_normal(shape) * scale + loc).astype(np.float32)
    ).astype(dtype)
    case = dict(
        x=arr(n, h, w, c, loc=mean),
        weight=arr(o, 3, 3, c, scale=1.0 / np.sqrt(9 * c)),
        bias=arr(o) if bias else None,
        residual=arr(n, h * upsample, w * upsample, o) if residual else None,
        gamma=arr(c, scale=0.5, loc=1.0) if norm else None,
        beta=arr(c, scale=0.5) if norm else None,
        groups=groups,
        shortcut=(
            arr(n, h * upsample, w * upsample, shortcut_c),
            arr(o, 1, 1, shortcut_c, scale=1.0 / np.sqrt(shortcut_c)),
            arr(o, scale=0.1) if bias else None,
        ) if shortcut_c else None,
    )
    return case


def conv1x1(x, w, b):
    """The unfused shortcut: mlx.nn.Conv2d(Cs, O, 1)."""
    y = mx.conv2d(x, w)
    return y if b is None else y + b


def run_both(case, *, norm, silu, upsample, eps=1e-6):
    x, w, b, r = case["x"], case["weight"], case["bias"], case["residual"]
    kw = dict(silu=silu, upsample=upsample)
    fused_norm = None
    ref_norm = None
    if norm:
        stats = fusedconv.group_norm_stats(x, case["groups"], eps)
        fused_norm = (stats, case["gamma"], case["beta"])
        ref_norm = (case["gamma"], case["beta"], case["groups"], eps)
    sc = case["shortcut"]
    f32 = lambda a: None if a is None else a.astype(mx.float32)  # noqa: E731
    got = fusedconv.conv3x3(x, w, b, norm=fused_norm, residual=r, shortcut=sc, **kw)
    if sc is not None:
        r, r32 = conv1x1(*sc), conv1x1(*(f32(a) for a in sc))
    else:
        r32 = f32(r)
    same = reference_conv3x3(x, w, b, group_norm=ref_norm, residual=r, **kw)
    ref_norm32 = None if ref_norm is None else (f32(ref_norm[0]), f32(ref_norm[1]), ref_norm[2], eps)
    exact = reference_conv3x3(f32(x), f32(w), f32(b), group_norm=ref_norm32, residual=r32, **kw)
    # Sum of the magnitudes of every term of each output: the scale of the
    # rounding errors, which is far above |output| where the terms cancel.
    h32 = reference_activation(f32(x), group_norm=ref_norm32, silu=silu, upsample=upsample)
    magnitude = mx.conv2d(mx.abs(h32), mx.abs(f32(w)), padding=1)
    if b is not None:
        magnitude = magnitude + mx.abs(f32(b))
    if sc is not None:
        magnitude = magnitude + conv1x1(*(None if a is None else mx.abs(f32(a)) for a in sc))
    elif r32 is not None:
        magnitude = magnitude + mx.abs(r32)
    mx.eval(got, same, exact, magnitude)
    cancellation = magnitude.max().item() / max(mx.abs(exact).max().item(), 1e-6)
    return got, same, exact, cancellation


def assert_parity(got, same, exact, dtype, cancellation, conditioning=1.0):
    """conditioning = |mean| / std of the normalised input: x - mean cancels that
    many leading digits in f32 on both sides, so both tolerances widen by 4u_f32
    per unit of it. cancellation = max over outputs of (sum of |terms|) / max
    |output|: the fused op rounds each activation (u) and the output (u/2) once,
    so |got - exact| <= 2u * sum|terms| deterministically, and the same-dtype
    composition adds its own ~4u (norm, SiLU, conv, add). That bound replaces the
    random-walk tolerances where the terms cancel (few outputs, e.g. a 1x1 image
    with one output channel)."""
    u = UNIT_ROUNDOFF[dtype]
    extra = 4 * UNIT_ROUNDOFF[mx.float32] * conditioning
    assert got.dtype == dtype
    assert got.shape == exact.shape
    assert np.isfinite(np.array(got.astype(mx.float32))).all()
    e32 = normalized_error(got, exact)
    esame = normalized_error(got, same)
    tol32 = max(PARITY_TOL_F32_REF[dtype], 2 * u * cancellation) + extra
    tol_same = max(PARITY_TOL_SAME_DTYPE[dtype], 8 * u * cancellation) + extra
    assert e32 <= tol32, f"vs f32 reference: {e32:.3g} (cancellation {cancellation:.3g})"
    assert esame <= tol_same, f"vs {dtype} reference: {esame:.3g} (cancellation {cancellation:.3g})"


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4, 8, 32]))
    per_group = draw(st.sampled_from([1, 2, 3, 5, 8]))  # C/G not always a power of two
    return dict(
        n=draw(st.integers(1, 2)),
        h=draw(st.integers(1, 9)),
        w=draw(st.integers(1, 13)),
        c=groups * per_group,
        o=draw(st.sampled_from([1, 3, 8, 16, 17, 40])),
        groups=groups,
        norm=draw(st.booleans()),
        silu=draw(st.booleans()),
        bias=draw(st.booleans()),
        # what is added after the bias: nothing, a residual array, or a fused 1x1 shortcut
        tail=draw(st.sampled_from(["none", "residual", "shortcut"])),
        shortcut_c=draw(st.sampled_from([1, 5, 16, 24])),
        upsample=draw(st.sampled_from([1, 2])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_random_shapes_and_options(cpu_isa, dtype, case):
    opts = {k: case[k] for k in ("norm", "bias", "upsample")}
    opts["residual"] = case["tail"] == "residual"
    opts["shortcut_c"] = case["shortcut_c"] if case["tail"] == "shortcut" else 0
    data = make_case(case["seed"], case["n"], case["h"], case["w"], case["c"], case["o"], case["groups"], dtype, **opts)
    got, same, exact, cancellation = run_both(data, norm=case["norm"], silu=case["silu"], upsample=case["upsample"])
    assert_parity(got, same, exact, dtype, cancellation)


# Shapes that cross the CPU plan's tile boundaries: several column strips
# (strip width depends on C), several row bands, batch > 1, O not a multiple
# of the 16-channel block, conv_out's O=3, a 1x1 image, VAE-like channel counts.
EDGE_SHAPES = [
    # n, h, w, c, o, groups, upsample
    (1, 1, 1, 32, 3, 32, 1),
    (1, 1, 1, 32, 3, 32, 2),
    (2, 5, 130, 16, 17, 4, 1),
    (1, 37, 70, 16, 16, 8, 2),
    (1, 9, 41, 512, 24, 32, 1),
    (1, 6, 31, 256, 3, 32, 2),
    (3, 17, 9, 128, 128, 32, 1),
    (1, 23, 61, 96, 40, 3, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tile_edges(cpu_isa, dtype, shape):
    n, h, w, c, o, groups, upsample = shape
    data = make_case(7, n, h, w, c, o, groups, dtype, norm=True, bias=True, residual=True, upsample=upsample)
    got, same, exact, cancellation = run_both(data, norm=True, silu=True, upsample=upsample)
    assert_parity(got, same, exact, dtype, cancellation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7, 29, 64, 32, 8, 48), (1, 12, 130, 32, 17, 8, 96)], ids=str)
def test_fused_shortcut(cpu_isa, dtype, shape):
    """A resnet's channel-changing 1x1 shortcut added in the epilogue, with bias."""
    n, h, w, c, o, groups, cs = shape
    data = make_case(9, n, h, w, c, o, groups, dtype, norm=True, bias=True, residual=False, upsample=1, shortcut_c=cs)
    got, same, exact, cancellation = run_both(data, norm=True, silu=True, upsample=1)
    assert_parity(got, same, exact, dtype, cancellation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_mean_input(dtype):
    """GroupNorm over inputs far from zero: the stats must not lose the variance."""
    data = make_case(3, 2, 11, 12, 64, 32, 32, dtype, norm=True, bias=True, residual=False, upsample=1, mean=100.0)
    got, same, exact, cancellation = run_both(data, norm=True, silu=True, upsample=1)
    assert_parity(got, same, exact, dtype, cancellation, conditioning=100.0)


def test_plain_conv_matches_mx_conv2d_exactly_in_structure():
    """No options: the op is mx.conv2d(padding=1) (f32, accumulation order aside)."""
    data = make_case(11, 1, 19, 23, 48, 20, 1, mx.float32, norm=False, bias=False, residual=False, upsample=1)
    got = fusedconv.conv3x3(data["x"], data["weight"])
    want = mx.conv2d(data["x"], data["weight"], padding=1)
    assert normalized_error(got, want) <= 1e-5


def test_non_contiguous_inputs():
    """Transposed / strided views are read as their logical values."""
    rng = np.random.default_rng(5)
    base = mx.array(rng.standard_normal((1, 16, 10, 12)).astype(np.float32))
    x = base.transpose(0, 2, 1, 3)  # [1, 10, 16, 12], not row-contiguous
    w = mx.array(rng.standard_normal((12, 3, 3, 8)).astype(np.float32)).transpose(3, 1, 2, 0)  # [8,3,3,12] view
    gamma = mx.array(rng.standard_normal(24).astype(np.float32))[::2]
    beta = mx.array(rng.standard_normal(12).astype(np.float32))
    res = mx.array(rng.standard_normal((1, 16, 10, 8)).astype(np.float32)).transpose(0, 2, 1, 3)
    got = fusedconv.gn_silu_conv3x3(x, gamma, beta, w, groups=4, residual=res)
    want = reference_conv3x3(
        mx.array(np.array(x)), mx.array(np.array(w)), group_norm=(mx.array(np.array(gamma)), beta, 4, 1e-6),
        silu=True, residual=mx.array(np.array(res)),
    )
    assert normalized_error(got, want) <= 1e-5


def test_gn_silu_conv3x3_equals_explicit_composition():
    data = make_case(2, 2, 7, 9, 24, 10, 8, mx.float32, norm=True, bias=True, residual=True, upsample=2)
    got = fusedconv.gn_silu_conv3x3(
        data["x"], data["gamma"], data["beta"], data["weight"], data["bias"], groups=8, eps=1e-5, upsample=2,
        residual=data["residual"],
    )
    stats = fusedconv.group_norm_stats(data["x"], 8, 1e-5)
    want = fusedconv.conv3x3(
        data["x"], data["weight"], data["bias"], norm=(stats, data["gamma"], data["beta"]), silu=True,
        upsample=2, residual=data["residual"],
    )
    assert mx.array_equal(got, want).item()
