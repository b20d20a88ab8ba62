"""Cases a hostile user found (issue: reliability), each kept as a test. Those whose old
behaviour was a crash run in a subprocess, so that a regression fails the test instead of
killing the test run."""

import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

import fusedconv
from reference import reference_activation


def run_python(code: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_stats_of_an_image_with_more_than_2_31_pixels():
    """46341^2 > 2^31 pixels in one image (a 4.3 GB bf16 array): the pixel count is 64-bit.
    Was: mean 0, rstd 1/sqrt(eps)."""
    res = run_python("""
        import mlx.core as mx, fusedconv
        x = mx.full((1, 46341, 46341, 1), 3.0, dtype=mx.bfloat16)
        x[0, 0, 0, 0] = 4.0   # a variance that the result must see
        s = fusedconv.group_norm_stats(x, 1, 0.0)
        print(s[0, 0, 0].item(), s[0, 0, 1].item())
    """)
    assert res.returncode == 0, res.stderr
    mean, rstd = map(float, res.stdout.split())
    n = 46341**2
    assert mean == pytest.approx(3 + 1 / n, rel=1e-6)
    assert rstd == pytest.approx(1 / np.sqrt((n - 1) / n**2), rel=1e-3)


def test_output_size_overflowing_int32_is_a_value_error():
    """Was SIGFPE: H * upsample = 2^31."""
    res = run_python("""
        import mlx.core as mx, fusedconv
        try:
            fusedconv.conv3x3(mx.zeros((1, 2**30, 1, 1), dtype=mx.bfloat16),
                              mx.zeros((1, 3, 3, 1), dtype=mx.bfloat16), upsample=2)
        except ValueError as e:
            print("ValueError:", e)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ValueError: x:") and "2^31 - 1" in res.stdout


def test_huge_thread_count_is_capped_by_the_machine():
    """Was: "terminate called without an active exception" (abort) at 100000 threads."""
    code = """
        import mlx.core as mx, numpy as np, fusedconv
        x = mx.array(np.random.default_rng(0).standard_normal((1, 64, 512, 8)).astype(np.float32))
        w = mx.array(np.random.default_rng(1).standard_normal((8, 3, 3, 8)).astype(np.float32))
        y = fusedconv.conv3x3(x, w)
        np.save("/dev/stdout", np.array(y))
    """
    many = run_python(code, env={"FUSEDCONV_NUM_THREADS": "100000"})
    one = run_python(code, env={"FUSEDCONV_NUM_THREADS": "1"})
    assert many.returncode == 0, many.stderr
    assert many.stdout == one.stdout


@pytest.mark.parametrize("value", ["0", "-3", "two", "2x", ""])
def test_bad_thread_count_falls_back_to_the_core_count(value):
    res = run_python("""
        import mlx.core as mx, fusedconv
        print(fusedconv.conv3x3(mx.ones((1, 4, 4, 2)), mx.ones((1, 3, 3, 2))).sum().item())
    """, env={"FUSEDCONV_NUM_THREADS": value})
    assert res.returncode == 0, res.stderr
    assert float(res.stdout) == 2 * (4 * 9 + 8 * 6 + 4 * 4)  # interior / edge / corner taps x 2 channels


def test_attention_with_a_masked_first_key_block_is_finite():
    """Was: an all-NaN row when the first 64-key block of a query is all -inf. Here the first
    130 keys score -inf: q < 0 in every channel against k = +inf."""
    rng = np.random.default_rng(0)
    q = -mx.array(np.abs(rng.standard_normal((1, 5, 16))).astype(np.float32) + 0.1)
    k = mx.array(rng.standard_normal((1, 200, 16)).astype(np.float32))
    k = mx.concatenate([mx.full((1, 130, 16), mx.inf), k[:, 130:]], axis=1)
    v = mx.array(rng.standard_normal((1, 200, 16)).astype(np.float32))
    got = fusedconv.attention(q, k, v, 0.25)
    want = mx.softmax((q @ k.transpose(0, 2, 1)) * 0.25, axis=-1) @ v
    assert mx.isfinite(got).all().item()
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5)


def test_attention_row_masked_everywhere_is_nan_like_softmax():
    q = -mx.ones((1, 2, 4))
    k = mx.full((1, 70, 4), mx.inf)
    v = mx.ones((1, 70, 4))
    assert mx.isnan(fusedconv.attention(q, k, v, 1.0)).all().item()


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_silu_of_huge_negative_activations(dtype):
    """Was: SiLU(-1e37) = -0.06 (the fast exp clamped); also +/-inf and NaN propagate like the reference."""
    vals = [-3e38, -1e37, -1e36, -100.0, -88.5, -1.0, 0.0, 1.0, 88.5, 1e37, 3e38]
    # Four columns apart: the 16-bit convs of the FMA builds run Winograd F(2,3), whose
    # error is relative to the largest activation in a pair's 4-column window
    # (conv3x3_winograd.inc): 88.5 beside 1e37 would be lost there, as in any f32 sum.
    spaced = np.zeros(4 * len(vals), np.float32)
    spaced[::4] = vals
    x = mx.array(spaced.reshape(1, 1, -1, 1)).astype(dtype)
    w = mx.zeros((1, 3, 3, 1), dtype=dtype)
    w[0, 1, 1, 0] = 1.0  # the centre tap: the conv returns the activation itself
    got = np.array(fusedconv.conv3x3(x, w, silu=True).astype(mx.float32)).ravel()
    want = np.array(reference_activation(x.astype(mx.float32), silu=True).astype(dtype).astype(mx.float32)).ravel()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # atol: SiLU(-88.5) is -3.2e-37; MLX's sigmoid flushes it to -0.
    np.testing.assert_allclose(got, want, rtol=2**-7, atol=1e-30)


@pytest.mark.parametrize("call, name", [
    (lambda x: fusedconv.group_norm_stats(x, 4, 10**400), "eps"),
    (lambda x: fusedconv.group_norm_stats(x, 2**40, 1e-6), "groups"),
    (lambda x: fusedconv.group_norm_stats(x, 4, 1e39), "eps"),
    (lambda x: fusedconv.conv3x3(x, mx.zeros((1, 3, 3, 8)), upsample=2**40), "upsample"),
    (lambda x: fusedconv.attention(x[0], x[0], x[0], 10**400), "scale"),
    (lambda x: fusedconv.attention(x[0], x[0], x[0], 1e39), "scale"),
], ids=["eps-10**400", "groups-2**40", "eps-1e39", "upsample-2**40", "scale-10**400", "scale-1e39"])
def test_out_of_range_scalars_are_value_errors_naming_the_argument(call, name):
    x = mx.ones((1, 4, 4, 8))
    with pytest.raises(ValueError, match=f"^{name}:"):
        call(x)


def test_load_decoder_rejects_a_non_float_dtype(tmp_path):
    with pytest.raises(TypeError, match="^dtype:"):
        fusedconv.load_decoder(tmp_path, dtype=mx.int32)


@pytest.mark.parametrize("text, words", [("{not json", "not valid JSON"), ("[1, 2]", "not a config object"),
                                         ('{"_class_name": "AutoencoderTiny"}', "AutoencoderTiny"),
                                         ('{"block_out_channels": 5}', "unusable config")])
def test_bad_config_json_names_the_file(tmp_path, text, words):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="config.json") as e:
        fusedconv.load_decoder(tmp_path)
    assert words in str(e.value)


def test_a_decode_whose_floor_cannot_fit_fails_before_any_work():
    """Was: a [1, 8192, 8192, 4] latent ran 72 s, then the OOM killer ended the process."""
    import time

    from fusedconv.config import PRESETS
    from fusedconv.decoder import AutoencoderKLDecoder

    dec = AutoencoderKLDecoder(PRESETS["sd1"])
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"^z: decoding 1 image\(s\) of 65536x65536 needs at least"):
        dec.decode(mx.zeros((1, 8192, 8192, 4)))
    assert time.perf_counter() - t0 < 5


def test_the_memory_error_names_the_plans_that_fit():
    from fusedconv.config import PRESETS
    from fusedconv.decoder import AutoencoderKLDecoder
    from fusedconv.memory import peak_live_elements

    dec = AutoencoderKLDecoder(PRESETS["sd1"])  # float32 weights
    per_image = 4 * peak_live_elements(PRESETS["sd1"], 1024, 1024, 1)
    old = mx.set_memory_limit(mx.get_active_memory() + int(1.5 * per_image))
    try:
        with pytest.raises(MemoryError, match="one image at a time") as e:
            dec.decode(mx.zeros((4, 128, 128, 4)))
        assert "bfloat16" not in str(e.value)  # half of four images' floor still does not fit
        with pytest.raises(MemoryError, match="bfloat16"):  # 1280^2 needs 1.56x, in bf16 0.78x
            dec.decode(mx.zeros((1, 160, 160, 4)))
    finally:
        mx.set_memory_limit(old)


@pytest.mark.skipif(mx.cuda.is_available(), reason="MLX's CUDA build cannot even import under the address-space "
                    "limit this test sets (cudaMallocManaged fails at import; found on the H200 host)")
def test_out_of_memory_in_a_primitive_is_a_memory_error_naming_op_and_bytes():
    """Was: a segfault writing through the null buffer MLX's allocator returned."""
    res = run_python("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        import mlx.core as mx, fusedconv
        try:
            mx.eval(fusedconv.conv3x3(mx.zeros((1, 4096, 4096, 64), mx.bfloat16),
                                      mx.zeros((256, 3, 3, 64), mx.bfloat16), upsample=2))
        except MemoryError as e:
            print("MemoryError:", e)
    """)
    assert res.returncode == 0, res.stderr
    assert "MemoryError: fusedconv.FusedConv3x3: out of memory allocating 34359738368 bytes" in res.stdout
