"""Fuzzing of the ops' argument handling (hypothesis): shapes that are often inconsistent,
dtypes including integers, every option combination. Each call either raises a ValueError /
TypeError whose message starts with the name of an argument, or computes what the reference
composition computes, element by element within the rounding bound of its terms:
|fused - f32 reference| <= 4u * sum|terms| + (K f32 roundings) + the dtype's smallest normal,
with sum|terms| = conv(|activation|, |weight|) + |bias| + |residual| (+ |shortcut| terms)."""

import mlx.core as mx
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

import fusedconv
from reference import UNIT_ROUNDOFF, reference_activation

ARGUMENT_NAMES = ("x:", "weight:", "bias:", "norm:", "norm stats:", "norm gamma:", "norm beta:", "residual:",
                  "shortcut:", "shortcut x:", "shortcut weight:", "shortcut bias:", "upsample:", "silu:",
                  "groups:", "eps:")
DTYPES = [mx.float32, mx.float16, mx.bfloat16, mx.int32, mx.uint8]
SMALLEST_NORMAL = {mx.float32: 1.2e-38, mx.float16: 6.1e-5, mx.bfloat16: 1.2e-38}


def arr(rng, shape, dtype, scale=1.0):
    return mx.array((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)


@st.composite
def calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n, h, w, c, o = (draw(st.integers(1, m)) for m in (2, 5, 5, 8, 6))
    up = draw(st.sampled_from([1, 2] * 4 + [3, 0]))
    dtype = draw(st.sampled_from(DTYPES[:3] * 6 + DTYPES[3:]))
    off = lambda: draw(st.sampled_from([0] * 16 + [1, -1]))  # noqa: E731 - a shape off by one, sometimes
    other_dtype = lambda: draw(st.sampled_from([dtype] * 24 + DTYPES))  # noqa: E731
    x = arr(rng, (n, h, w, c), dtype)
    weight = arr(rng, (o + off(), 3, 3, max(c + off(), 1)), other_dtype(), 1 / (3 * np.sqrt(c)))
    kw = dict(silu=draw(st.booleans()), upsample=up)
    if draw(st.booleans()):
        kw["bias"] = arr(rng, (max(o + off(), 1),), other_dtype(), 0.1)
    if draw(st.booleans()):
        groups = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0] + [c + 1]))
        eps = draw(st.sampled_from([1e-6, 1e-3, 1.0]))
        valid = c % groups == 0 and dtype in DTYPES[:3]
        stats = fusedconv.group_norm_stats(x, groups, eps) if valid else mx.zeros((n, groups, 2))
        kw["norm"] = (stats, arr(rng, (max(c + off(), 1),), other_dtype(), 0.3) + 1, arr(rng, (c,), dtype, 0.3))
        kw["_norm_ref"] = (groups, eps)
    ho, wo = h * max(up, 1), w * max(up, 1)
    tail = draw(st.sampled_from(["none", "residual", "shortcut", "both"]))
    if tail in ("residual", "both"):
        kw["residual"] = arr(rng, (n, ho + off(), wo, o), other_dtype())
    if tail in ("shortcut", "both"):
        cs = draw(st.integers(1, 5))
        kw["shortcut"] = (arr(rng, (n, ho, wo + off(), cs), other_dtype()), arr(rng, (o, 1, 1, cs), dtype, 0.4),
                          arr(rng, (o,), dtype, 0.1) if draw(st.booleans()) else None)
    return x, weight, kw


def reference_and_bound(x, weight, kw):
    """The f32 composition and sum|terms| per output element."""
    f32 = lambda a: None if a is None else a.astype(mx.float32)  # noqa: E731
    norm = None
    if "norm" in kw:
        groups, eps = kw["_norm_ref"]
        norm = (f32(kw["norm"][1]), f32(kw["norm"][2]), groups, eps)
    act = reference_activation(f32(x), group_norm=norm, silu=kw["silu"], upsample=kw["upsample"])
    act = act.astype(x.dtype).astype(mx.float32)  # the fused op rounds the activation to the dtype
    w = f32(weight)
    out = mx.conv2d(act, w, padding=1)
    terms = mx.conv2d(mx.abs(act), mx.abs(w), padding=1)
    for key in ("bias", "residual"):
        if kw.get(key) is not None:
            out, terms = out + f32(kw[key]), terms + mx.abs(f32(kw[key]))
    if kw.get("shortcut") is not None:
        xs, ws, bs = (f32(a) for a in kw["shortcut"])
        ws = ws.reshape(ws.shape[0], -1)
        out, terms = out + xs @ ws.T, terms + mx.abs(xs) @ mx.abs(ws).T
        if bs is not None:
            out, terms = out + bs, terms + mx.abs(bs)
    return out, terms


@settings(max_examples=400, deadline=None)
@given(calls())
def test_fuzzed_calls_are_rejected_by_name_or_match_the_reference(call):
    x, weight, kw = call
    args = {k: v for k, v in kw.items() if not k.startswith("_")}
    try:
        got = fusedconv.conv3x3(x, weight, **args)
        mx.eval(got)
    except (ValueError, TypeError) as e:
        assert str(e).startswith(ARGUMENT_NAMES), f"message does not name the argument: {e}"
        event(f"rejected: {str(e).split(':')[0]}")
        return
    event("computed")
    want, terms = reference_and_bound(x, weight, kw)
    got32 = got.astype(mx.float32)
    u, k = UNIT_ROUNDOFF[x.dtype], 9 * x.shape[-1] + 8
    tol = (4 * u + k * 2.0**-24) * terms + SMALLEST_NORMAL[x.dtype]
    assert got.shape == want.shape and got.dtype == x.dtype
    assert mx.all(mx.abs(got32 - want) <= tol).item(), float(mx.max(mx.abs(got32 - want) - tol).item())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9), st.integers(-2, 10),
       st.sampled_from(DTYPES), st.sampled_from([0.0, 1e-6, -1.0, float("nan"), float("inf"), 1e39]))
def test_fuzzed_stats_calls(n, h, w, c, groups, dtype, eps):
    x = arr(np.random.default_rng(c), (n, h, w, c), dtype)
    try:
        s = fusedconv.group_norm_stats(x, groups, eps)
        mx.eval(s)
    except (ValueError, TypeError) as e:
        assert str(e).startswith(ARGUMENT_NAMES), e
        return
    xg = np.array(x.astype(mx.float32)).reshape(n, h * w, groups, c // groups).transpose(0, 2, 1, 3).reshape(
        n, groups, -1).astype(np.float64)
    mean, var = xg.mean(-1), xg.var(-1)
    with np.errstate(divide="ignore"):
        rstd = 1 / np.sqrt(var + eps)
    np.testing.assert_allclose(np.array(s)[..., 0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(s)[..., 1], rstd, rtol=1e-4)
