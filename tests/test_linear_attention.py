"""fusedconv.linear and fusedconv.attention (the decoder's CPU matmuls) against MLX in float32."""

import gc

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedconv
from reference import UNIT_ROUNDOFF, normalized_error

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
# f32 reference from the same (rounded) inputs: only the output rounding (u/2) and
# f32 accumulation order separate them; 4u leaves room. f32: 1e-5 as for conv3x3.
TOL = {mx.float32: 1e-5, mx.float16: 4 * UNIT_ROUNDOFF[mx.float16], mx.bfloat16: 4 * UNIT_ROUNDOFF[mx.bfloat16]}


def rand(rng, shape, dtype, scale=1.0):
    return mx.array((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lead=st.sampled_from([(1,), (7,), (2, 3), (1, 5, 9)]), k=st.integers(1, 80), n=st.integers(1, 70),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_linear_matches_matmul(cpu_isa, dtype, lead, k, n, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, (*lead, k), dtype), rand(rng, (n, k), dtype, 1 / np.sqrt(k))
    b = rand(rng, (n,), dtype) if bias else None
    got = fusedconv.linear(x, w, b)
    want = x.astype(mx.float32) @ w.astype(mx.float32).T + (0 if b is None else b.astype(mx.float32))
    assert got.shape == (*lead, n) and got.dtype == dtype
    assert normalized_error(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 2), tq=st.integers(1, 130), tk=st.integers(1, 150), c=st.sampled_from([1, 8, 17, 40, 64]),
       seed=st.integers(0, 2**31 - 1))
def test_attention_matches_softmax_reference(cpu_isa, dtype, b, tq, tk, c, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rand(rng, (b, tq, c), dtype, 2.0), rand(rng, (b, tk, c), dtype, 2.0), rand(rng, (b, tk, c), dtype)
    scale = 1 / np.sqrt(c)
    got = fusedconv.attention(q, k, v, scale)
    f = [a.astype(mx.float32) for a in (q, k, v)]
    want = mx.softmax((f[0] @ f[1].transpose(0, 2, 1)) * scale, axis=-1) @ f[2]
    assert got.shape == q.shape and got.dtype == dtype
    assert normalized_error(got, want) <= TOL[dtype]


def test_attention_scratch_independent_of_tokens(monkeypatch):
    """Peak above inputs = output + per-worker blocks; 8192 tokens' scores would be 256 MiB.
    Two workers for every size (the scratch is per worker, and 512 tokens are fewer query
    blocks than a 16-core machine has cores). Query blocks grow with the tokens up to a cap
    (kAttnMaxQueryBlock), which 4096 tokens on two workers reach: from there on the scratch
    is the same, and below it never more."""
    monkeypatch.setenv("FUSEDCONV_NUM_THREADS", "2")

    def overhead(tokens):
        q, k, v = (mx.random.normal((1, tokens, 64)) for _ in range(3))
        mx.eval(q, k, v)
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        out = fusedconv.attention(q, k, v, 0.125)
        mx.eval(out)
        return mx.get_peak_memory() - base - out.nbytes

    small, capped, large = overhead(512), overhead(4096), overhead(8192)
    assert large == capped and small <= capped and large < 1 * 2**20, (small, capped, large)


@pytest.mark.parametrize(
    "args, exc, name",
    [
        ((mx.zeros((2, 3)), mx.zeros((4, 5))), ValueError, "weight"),
        ((mx.zeros((2, 3)), mx.zeros((4, 3), dtype=mx.float16)), TypeError, "weight"),
        ((mx.zeros((2, 3), dtype=mx.int32), mx.zeros((4, 3))), TypeError, "x"),
        ((mx.zeros((2, 3)), mx.zeros((4, 3)), mx.zeros((3,))), ValueError, "bias"),
        ((mx.zeros((0, 3)), mx.zeros((4, 3))), ValueError, "x"),
    ],
)
def test_linear_rejects(args, exc, name):
    with pytest.raises(exc, match=name):
        fusedconv.linear(*args)


@pytest.mark.parametrize(
    "q, k, v, exc, name",
    [
        (mx.zeros((4, 8)), mx.zeros((1, 4, 8)), mx.zeros((1, 4, 8)), ValueError, "q"),
        (mx.zeros((1, 4, 8)), mx.zeros((1, 4, 7)), mx.zeros((1, 4, 8)), ValueError, "k"),
        (mx.zeros((1, 4, 8)), mx.zeros((1, 5, 8)), mx.zeros((1, 4, 8)), ValueError, "v"),
        (mx.zeros((1, 4, 8)), mx.zeros((1, 4, 8), dtype=mx.float16), mx.zeros((1, 4, 8)), TypeError, "k"),
        (mx.zeros((1, 4, 8)), mx.zeros((1, 4, 8)), [[0.0]], TypeError, "v"),
    ],
)
def test_attention_rejects(q, k, v, exc, name):
    with pytest.raises(exc, match=name):
        fusedconv.attention(q, k, v, 0.5)
