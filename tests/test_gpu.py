"""The GPU backends on a real GPU, against the CPU backend and the reference composition:
Metal (an Apple GPU; on Linux CI its kernels are verified by test_metal_emulator.py and have
never run on Apple hardware as of this release) and CUDA (MLX's CUDA build; run on an H100/H200
through this project's device machine). Skipped where MLX has neither."""

import gc

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedconv
from reference import normalized_error
from test_metal_emulator import CONV_SHAPES, DTYPES, TOL, conv_case

GPU_BACKEND = "metal" if mx.metal.is_available() else ("cuda" if mx.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(GPU_BACKEND is None, reason="needs MLX with Metal or CUDA and its GPU")

# Beyond the emulator's shapes, the CUDA kernels' edges: widths and heights that are not
# multiples of the 8 x 32 tile, channel counts that are and are not multiples of the 8-wide
# vector loads, more output channels than one tile, O = 9 (just past the narrow kernels),
# more input channels than the tensor-core kernel's norm table (the CUDA-core kernel in
# 16-bit dtypes), and O <= 8 of vector inputs (the narrow tensor-core kernel: conv_out).
GPU_SHAPES = CONV_SHAPES + [
    (1, 2, 130, 24, 136, 8, 1, "residual"),
    (1, 3, 70, 40, 20, 4, 2, "shortcut"),
    (1, 4, 33, 16, 16, 4, 2, "residual"),
    (2, 5, 50, 48, 72, 16, 1, "shortcut"),
    (1, 2, 129, 21, 9, 3, 1, "none"),
    (1, 3, 9, 1040, 16, 8, 1, "residual"),
    (1, 9, 130, 64, 256, 32, 1, "residual"),
    (2, 5, 67, 48, 136, 16, 2, "shortcut"),
    (1, 9, 70, 128, 3, 32, 1, "none"),
    (1, 5, 40, 24, 8, 4, 2, "residual"),
    (2, 4, 33, 32, 1, 8, 1, "shortcut"),
]
# On CUDA the conv has two tensor-core kernels: wgmma where the sm_90a cubin runs (Hopper)
# and mma.sync (other GPUs, or forced by FUSEDCONV_CUDA_WGMMA=0); on Hopper both are tested.
CONV_KERNELS = ["default", "mma.sync"] if GPU_BACKEND == "cuda" else ["default"]


@pytest.fixture(autouse=True)
def _cpu_default():
    """Overrides conftest's CPU default stream: inputs are made on the GPU stream, and each side
    of a GPU-vs-CPU comparison reads only evaluated arrays, so that no evaluation waits across
    devices. With inputs made on the CPU stream this file hung now and then on MLX-CUDA 0.32.4,
    in MLX's own wait for a CPU-stream evaluation's signal (README, the CUDA record of
    2026-12-04); the decoder never mixes streams."""
    with mx.stream(mx.gpu):
        yield


@pytest.fixture(params=CONV_KERNELS)
def conv_kernel(request, monkeypatch):
    if request.param == "mma.sync":
        monkeypatch.setenv("FUSEDCONV_CUDA_WGMMA", "0")
    else:
        monkeypatch.delenv("FUSEDCONV_CUDA_WGMMA", raising=False)
    return request.param


def conv(x, weight, kw, stream):
    mx.eval(x, weight, kw)
    norm = (kw["stats"], kw["gamma"], kw["beta"]) if "stats" in kw else None
    key = "pixel_norm" if kw.get("pixel_norm") else "norm"
    return fusedconv.conv3x3(x, weight, kw.get("bias"), **{key: norm}, silu=kw["silu"], upsample=kw["upsample"],
                             residual=kw.get("residual"), shortcut=kw.get("shortcut"), stream=stream)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv3x3_gpu_matches_cpu(dtype, shape, conv_kernel):
    n, h, w, c, o, groups, up, tail = shape
    x, weight, kw = conv_case(hash(shape) % 1000, dtype, n, h, w, c, o, groups, up, tail=tail)
    assert normalized_error(conv(x, weight, kw, mx.gpu), conv(x, weight, kw, mx.cpu)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 37, 20, 40, 0, 2, "residual"), (2, 2, 140, 16, 3, 0, 1, "shortcut")],
                         ids=lambda s: "x".join(map(str, s)))
def test_pixel_norm_conv3x3_gpu_matches_cpu(dtype, shape, conv_kernel):
    n, h, w, c, o, _, up, tail = shape
    x, weight, kw = conv_case(hash(shape) % 1000, dtype, n, h, w, c, o, 1, up, tail=tail, pixel_norm=True)
    assert normalized_error(conv(x, weight, kw, mx.gpu), conv(x, weight, kw, mx.cpu)) <= TOL[dtype]


@st.composite
def conv_calls(draw):
    """Valid calls with every option: the GPU and CPU backends compute the same op."""
    dtype = draw(st.sampled_from(DTYPES))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 140))
    c, o = draw(st.integers(1, 40)), draw(st.sampled_from([1, 3, 8, 9, 16, 33, 130]))
    groups = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    up = draw(st.sampled_from([1, 2]))
    tail = draw(st.sampled_from(["none", "residual", "shortcut"]))
    kind = draw(st.sampled_from(["group", "pixel", "none"]))
    x, weight, kw = conv_case(draw(st.integers(0, 2**31)), dtype, n, h, w, c, o, groups, up, tail=tail,
                              norm=kind == "group", pixel_norm=kind == "pixel", silu=draw(st.booleans()),
                              bias=draw(st.booleans()), shortcut_c=draw(st.integers(1, 20)))
    return dtype, x, weight, kw


# (The fixture sets the kernel once for all examples, which is what is meant.)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_calls())
def test_conv3x3_gpu_matches_cpu_fuzz(conv_kernel, call):
    dtype, x, weight, kw = call
    assert normalized_error(conv(x, weight, kw, mx.gpu), conv(x, weight, kw, mx.cpu)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", [((2, 33, 17, 64), 32), ((1, 300, 301, 48), 16), ((1, 7, 5, 30), 5),
                                           ((1, 96, 80, 128), 32), ((1, 5, 3, 2056), 8)],
                         ids=["small", "many-slices", "group-of-6", "group-of-4", "wide"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_group_norm_stats_gpu_matches_cpu(dtype, shape, groups, offset):
    # A large mean (50) over a small spread: the variance must not lose its digits. The
    # rows kernel takes C in whole 16-byte vectors (at most 256) of an aligned x; "wide",
    # "group-of-6" and "misaligned" (x a view one element into its buffer) the element-wise one.
    size = int(np.prod(shape))
    flat = (mx.random.normal((size + offset,), key=mx.random.key(3)) * 2 + 50).astype(dtype)
    mx.eval(flat)
    x = flat[offset:].reshape(shape)
    mx.eval(x)
    gpu = fusedconv.group_norm_stats(x, groups, 1e-6, stream=mx.gpu)
    cpu = fusedconv.group_norm_stats(x, groups, 1e-6, stream=mx.cpu)
    np.testing.assert_allclose(np.array(gpu), np.array(cpu), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pixel_norm_stats_gpu_matches_cpu(dtype):
    x = mx.random.normal((2, 19, 23, 45), key=mx.random.key(4)).astype(dtype)
    mx.eval(x)
    gpu = fusedconv.pixel_norm_stats(x, 1e-12, stream=mx.gpu)
    cpu = fusedconv.pixel_norm_stats(x, 1e-12, stream=mx.cpu)
    np.testing.assert_allclose(np.array(gpu), np.array(cpu), rtol=1e-5)


def conv_scratch(side, c=128):
    """MLX's peak during one fused GN+SiLU+conv on the GPU, less its inputs and output."""
    x = mx.random.normal((1, side, side, c), key=mx.random.key(5)).astype(mx.bfloat16)
    w = (mx.random.normal((c, 3, 3, c), key=mx.random.key(6)) * 0.03).astype(mx.bfloat16)
    gamma, beta = mx.ones((c,), mx.bfloat16), mx.zeros((c,), mx.bfloat16)
    stats = fusedconv.group_norm_stats(x, 32, 1e-6, stream=mx.gpu)
    mx.eval(x, w, gamma, beta, stats)
    gc.collect()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = fusedconv.conv3x3(x, w, norm=(stats, gamma, beta), silu=True, stream=mx.gpu)
    mx.eval(out)
    return mx.get_peak_memory() - base - out.nbytes


def stats_scratch(side, c=128):
    x = mx.random.normal((1, side, side, c), key=mx.random.key(7)).astype(mx.bfloat16)
    mx.eval(x)
    gc.collect()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = fusedconv.group_norm_stats(x, 32, 1e-6, stream=mx.gpu)
    mx.eval(out)
    return mx.get_peak_memory() - base - out.nbytes


def test_gpu_scratch_does_not_grow_with_image():
    # The conv's only device scratch is its weights repacked for the wgmma kernel (Hopper):
    # O x 9 x C rounded up to whole tiles of 128 x 16 channels, 288 KiB here at any image
    # size (none on the mma.sync kernel); the statistics keep at most 256 slices x 2 floats
    # per (image, group): 64 KiB for 32 groups. 16x the pixels, the same bounds.
    packed = 128 * 9 * 128 * 2
    conv = {side: conv_scratch(side) for side in (256, 1024)}
    for side in (256, 1024):
        assert conv[side] <= packed + 64 * 1024, side
        assert stats_scratch(side) <= 64 * 1024 + 16 * 1024, side
    assert conv[1024] <= conv[256] + 16 * 1024


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


def test_decoder_gpu_composes_wide_convs_only_on_cuda_mma(conv_kernel):
    """The 512-channel stages run mlx.nn's composition (cuDNN convs, ops.composition_is_faster)
    only where MLX's CUDA backend runs the conv on the mma.sync kernel: not with Hopper's wgmma
    kernel, nor on Metal. The decode matches the all-fused one."""
    from fusedconv._abi import ext
    from fusedconv.config import VAEConfig
    from fusedconv.vae import AutoencoderKLDecoder

    family = ext.conv3x3_kernel_family(mx.gpu)
    if GPU_BACKEND == "metal":
        assert family == "metal"
    else:
        hopper = mx.device_info(mx.gpu).get("architecture") == "sm_90"  # the build installs sm_90a code
        assert family == ("wgmma" if hopper and conv_kernel == "default" else "mma"), (family, mx.device_info(mx.gpu))
    cfg = VAEConfig(block_out_channels=(32, 64, 512, 512), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    dec = AutoencoderKLDecoder(cfg)
    z = mx.random.normal((1, 9, 7, 4))
    with mx.stream(mx.gpu):
        composed = [name for name, fn in dec.stages(z) if fn.__name__ == "reference"]
        assert bool(composed) == (family == "mma"), composed
        hybrid = dec(z)
        dec.prefer_composition = lambda channels: False
        fused = dec(z)
    assert normalized_error(hybrid, fused) <= 1e-4


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
def test_decoder_gpu_matches_diffusers(tmp_path, dtype):
    pytest.importorskip("diffusers")
    from fusedconv.vae import load_decoder
    from test_vae_diffusers import TOL as DECODE_TOL
    from vae_fixtures import diffusers_decode, diffusers_vae, normalized

    model = diffusers_vae("flux-like-4block")
    model.save_pretrained(tmp_path)
    dec = load_decoder(tmp_path, dtype=dtype).set_fused(True)
    z = np.random.default_rng(2).standard_normal((2, 9, 7, 16)).astype(np.float32)
    with mx.stream(mx.gpu):
        got = np.array(dec(mx.array(z)).astype(mx.float32))
    assert normalized(got, diffusers_decode(model, z)) <= DECODE_TOL[dtype]
