"""group_norm_stats against float64 numpy, PyTorch grouping."""

import fusedconv
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def numpy_stats(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    n, h, w, c = x.shape
    g = x.astype(np.float64).reshape(n, h * w, groups, c // groups).transpose(0, 2, 1, 3).reshape(n, groups, -1)
    mean = g.mean(-1)
    var = g.var(-1)
    return np.stack([mean, 1.0 / np.sqrt(var + eps)], -1)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    groups=st.sampled_from([1, 2, 3, 8, 32]),
    per_group=st.sampled_from([1, 3, 4, 16]),
    dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_float64(n, h, w, groups, per_group, dtype, seed):
    rng = np.random.default_rng(seed)
    x = mx.array(rng.standard_normal((n, h, w, groups * per_group)).astype(np.float32) * 2 + 0.5).astype(dtype)
    got = fusedconv.group_norm_stats(x, groups, 1e-6)
    assert got.dtype == mx.float32 and got.shape == (n, groups, 2)
    # The input is exact in f32; only f32 accumulation separates us from float64.
    want = numpy_stats(np.array(x.astype(mx.float32)), groups, 1e-6)
    np.testing.assert_allclose(np.array(got), want, rtol=2e-5, atol=2e-6)


def test_pytorch_grouping_not_mlx_default():
    """Group g holds channels [g*C/G, (g+1)*C/G): give each block its own offset."""
    c, groups = 8, 4
    x = np.zeros((1, 3, 3, c), np.float32)
    for g in range(groups):
        x[..., g * 2 : (g + 1) * 2] = 10.0 * g
    got = np.array(fusedconv.group_norm_stats(mx.array(x), groups, 1e-6))
    np.testing.assert_allclose(got[0, :, 0], [0, 10, 20, 30])


@pytest.mark.parametrize("mean", [1e3, 1e4])
def test_large_mean_is_stable(mean):
    """A one-pass E[x^2]-E[x]^2 in f32 loses all variance at mean 1e4, std 1."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 64, 48, 64)) + mean).astype(np.float32)
    got = np.array(fusedconv.group_norm_stats(mx.array(x), 32, 1e-6))
    want = numpy_stats(x, 32, 1e-6)
    np.testing.assert_allclose(got[..., 0], want[..., 0], rtol=1e-6)
    np.testing.assert_allclose(got[..., 1], want[..., 1], rtol=1e-3)


def test_constant_input_gives_rsqrt_eps():
    x = mx.full((1, 5, 5, 16), 3.0)
    got = np.array(fusedconv.group_norm_stats(x, 4, 1e-2))
    np.testing.assert_allclose(got[0, :, 0], 3.0)
    np.testing.assert_allclose(got[0, :, 1], 10.0, rtol=1e-6)
