"""The per-pixel norm (the RMS norm of the Wan 2.1 / Qwen-Image VAE): pixel_norm_stats and
conv3x3(pixel_norm=...) against the composition, every CPU build, errors, memory, transforms.

Tolerances as tests/test_conv3x3_parity.py: the fused op rounds the activation to the storage
dtype once (as the reference composition here does) and accumulates in f32, so the error
against the f32 composition is a few units of roundoff u of the output scale: 4u, plus
accumulation order in f32 (1e-5)."""

import gc

import mlx.core as mx
import numpy as np
import pytest

import fusedconv
from reference import UNIT_ROUNDOFF, normalized_error

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def rand(rng, shape, dtype, scale=1.0, loc=0.0):
    return mx.array((rng.standard_normal(shape) * scale + loc).astype(np.float32)).astype(dtype)


def reference(x, w, b, stats, gamma, beta, silu, upsample, residual):
    """x * stats * gamma + beta -> SiLU -> rounded to x's dtype -> nearest 2x -> conv -> + residual (f32)."""
    f32 = lambda a: a.astype(mx.float32)  # noqa: E731
    a = f32(x) * stats[..., None] * f32(gamma) + f32(beta)
    if silu:
        a = a * mx.sigmoid(a)
    a = f32(a.astype(x.dtype))
    if upsample == 2:
        a = mx.repeat(mx.repeat(a, 2, axis=1), 2, axis=2)
    y = mx.conv2d(a, f32(w), padding=1) + f32(b)
    return y if residual is None else y + f32(residual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, h, w, c, o, upsample, silu, residual", [
    (1, 3, 37, 20, 40, 1, True, True), (2, 2, 9, 16, 3, 2, True, False), (1, 5, 13, 130, 17, 2, False, True),
    (1, 1, 1, 8, 33, 1, True, False)], ids=str)
def test_conv_with_pixel_norm_matches_the_composition(cpu_isa, dtype, n, h, w, c, o, upsample, silu, residual):
    rng = np.random.default_rng(c + o)
    x = rand(rng, (n, h, w, c), dtype, 2.0, 0.5)
    wt, b = rand(rng, (o, 3, 3, c), dtype, 1 / np.sqrt(9 * c)), rand(rng, (o,), dtype, 0.1)
    gamma, beta = rand(rng, (c,), dtype, 0.3, 1.0), rand(rng, (c,), dtype, 0.2)
    r = rand(rng, (n, h * upsample, w * upsample, o), dtype) if residual else None
    stats = fusedconv.pixel_norm_stats(x)
    got = fusedconv.conv3x3(x, wt, b, pixel_norm=(stats, gamma, beta), silu=silu, upsample=upsample, residual=r)
    want = reference(x, wt, b, stats, gamma, beta, silu, upsample, r)
    assert got.dtype == dtype
    assert normalized_error(got, want) <= max(4 * UNIT_ROUNDOFF[dtype], 1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_stats_match_f_normalize_scale(cpu_isa, dtype):
    """sqrt(C) / max(||x||, eps), with a zero pixel (eps decides), large values and odd C."""
    rng = np.random.default_rng(1)
    x = rand(rng, (2, 7, 9, 33), dtype, 30.0, 5.0)
    x[0, 0, 0] = 0
    got = np.array(fusedconv.pixel_norm_stats(x, 1e-6))
    v = np.array(x.astype(mx.float32)).astype(np.float64)
    want = np.sqrt(33) / np.maximum(np.linalg.norm(v, axis=-1), 1e-6)
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_errors_name_the_argument():
    x = mx.ones((1, 4, 5, 8))
    w = mx.ones((2, 3, 3, 8))
    g, b = mx.ones((8,)), mx.zeros((8,))
    s = fusedconv.pixel_norm_stats(x)
    with pytest.raises(ValueError, match="^norm stats:"):
        fusedconv.conv3x3(x, w, pixel_norm=(s[:, :3], g, b))
    with pytest.raises(TypeError, match="^norm stats:"):
        fusedconv.conv3x3(x, w, pixel_norm=(s.astype(mx.float16), g, b))
    with pytest.raises(ValueError, match="^norm:"):
        fusedconv.conv3x3(x, w, norm=(fusedconv.group_norm_stats(x, 2), g, b), pixel_norm=(s, g, b))
    with pytest.raises(ValueError, match="^norm gamma:"):
        fusedconv.conv3x3(x, w, pixel_norm=(s, g[:4], b))
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^eps:"):
            fusedconv.pixel_norm_stats(x, eps)
    with pytest.raises(ValueError, match="^x:"):
        fusedconv.pixel_norm_stats(mx.ones((4, 5, 8)))
    with pytest.raises(TypeError, match="^x:"):
        fusedconv.pixel_norm_stats(mx.ones((1, 4, 5, 8), dtype=mx.int32))


def test_scratch_does_not_grow_with_the_image(monkeypatch):
    """Peak above inputs minus the output (and the [N, H, W] statistics, 4 bytes a pixel, an
    input of the conv) stays bounded as H*W grows 16x."""
    monkeypatch.setenv("FUSEDCONV_NUM_THREADS", "2")

    def overhead(side):
        x = mx.random.normal((1, side, side, 64)).astype(mx.bfloat16)
        w = (0.05 * mx.random.normal((64, 3, 3, 64))).astype(mx.bfloat16)
        g, b = mx.ones((64,), mx.bfloat16), mx.zeros((64,), mx.bfloat16)
        mx.eval(x, w, g, b)
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        s = fusedconv.pixel_norm_stats(x)
        y = fusedconv.conv3x3(x, w, pixel_norm=(s, g, b), silu=True)
        mx.eval(y)
        return mx.get_peak_memory() - base - y.nbytes - s.nbytes

    # 240 and 960 columns: full-width strips in every build's plan (120 columns, or 96 for amx),
    # so that the per-worker scratch is at its cap in both (narrower images have narrower strips).
    small, big = overhead(240), overhead(960)
    assert big <= small + 64 * 1024 and big < 4 * 2**20, (small, big)


def test_grad_matches_the_composition():
    rng = np.random.default_rng(3)
    x, w = rand(rng, (1, 4, 5, 8), mx.float32), rand(rng, (6, 3, 3, 8), mx.float32, 0.2)
    g, b = rand(rng, (8,), mx.float32, 0.2, 1.0), rand(rng, (8,), mx.float32, 0.1)

    def fused(x, w, g, b):
        return (fusedconv.conv3x3(x, w, pixel_norm=(fusedconv.pixel_norm_stats(x), g, b), silu=True) ** 2).sum()

    def composed(x, w, g, b):
        s = 8**0.5 / mx.maximum(mx.sqrt((x * x).sum(-1, keepdims=True)), 1e-12)
        a = x * s * g + b
        return (mx.conv2d(a * mx.sigmoid(a), w, padding=1) ** 2).sum()

    got = mx.grad(fused, argnums=(0, 1, 2, 3))(x, w, g, b)
    want = mx.grad(composed, argnums=(0, 1, 2, 3))(x, w, g, b)
    for a, e in zip(got, want):
        assert normalized_error(a, e) <= 1e-4
