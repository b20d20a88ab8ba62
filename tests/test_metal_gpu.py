"""The Metal backend on a real Apple GPU, against the CPU backend. Runs only where MLX has
Metal (macOS); on Linux the same kernels are verified by the emulator
(test_metal_emulator.py). As of this release these tests have never run on Apple hardware."""

import mlx.core as mx
import numpy as np
import pytest

import fusedconv
from reference import normalized_error
from test_metal_emulator import CONV_SHAPES, DTYPES, TOL, conv_case

pytestmark = pytest.mark.skipif(not mx.metal.is_available(), reason="needs MLX with Metal (an Apple GPU)")


def conv(x, weight, kw, stream):
    norm = (kw["stats"], kw["gamma"], kw["beta"]) if "stats" in kw else None
    return fusedconv.conv3x3(x, weight, kw.get("bias"), norm=norm, silu=kw["silu"], upsample=kw["upsample"],
                             residual=kw.get("residual"), shortcut=kw.get("shortcut"), stream=stream)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv3x3_gpu_matches_cpu(dtype, shape):
    n, h, w, c, o, groups, up, tail = shape
    x, weight, kw = conv_case(hash(shape) % 1000, dtype, n, h, w, c, o, groups, up, tail=tail)
    assert normalized_error(conv(x, weight, kw, mx.gpu), conv(x, weight, kw, mx.cpu)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_norm_stats_gpu_matches_cpu(dtype):
    x = (mx.random.normal((2, 33, 17, 64)) * 2 + 50).astype(dtype)
    gpu = fusedconv.group_norm_stats(x, 32, 1e-6, stream=mx.gpu)
    cpu = fusedconv.group_norm_stats(x, 32, 1e-6, stream=mx.cpu)
    np.testing.assert_allclose(np.array(gpu), np.array(cpu), rtol=2e-5, atol=1e-5)


def test_decoder_gpu_fused_matches_reference():
    from fusedconv.config import VAEConfig
    from fusedconv.vae import AutoencoderKLDecoder

    cfg = VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    dec = AutoencoderKLDecoder(cfg)
    z = mx.random.normal((1, 9, 7, 4))
    with mx.stream(mx.gpu):
        fused = dec.set_fused(True)(z)
        ref = dec.set_fused(False)(z)
    assert normalized_error(fused, ref) <= 1e-4
