"""Peak memory: the fused conv allocates its output plus a scratch that does not grow with H*W."""

import gc

import fusedconv
import mlx.core as mx
import pytest

MiB = 2**20


@pytest.fixture(autouse=True)
def _two_workers(monkeypatch):
    # Scratch is per worker and a small image has fewer work units than a big
    # machine has cores: fix the worker count so that only H*W varies.
    monkeypatch.setenv("FUSEDCONV_NUM_THREADS", "2")


def gn_silu_conv(x, gamma, beta, weight):
    return fusedconv.gn_silu_conv3x3(x, gamma, beta, weight)


def conv_only(x, gamma, beta, weight):
    return fusedconv.conv3x3(x, weight)


def stats_only(x, gamma, beta, weight):
    return fusedconv.group_norm_stats(x, 32)


def overhead_above_output(h, w, c, o, dtype=mx.bfloat16, op=gn_silu_conv):
    """Peak allocator bytes above the live inputs, minus the output."""
    x = mx.random.normal((1, h, w, c)).astype(dtype)
    weight = (mx.random.normal((o, 3, 3, c)) * 0.05).astype(dtype)
    gamma, beta = mx.ones((c,), dtype=dtype), mx.zeros((c,), dtype=dtype)
    mx.eval(x, weight, gamma, beta)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    y = op(x, gamma, beta, weight)
    mx.eval(y)
    peak = mx.get_peak_memory() - base
    # The output as the allocator counts it (MLX's CUDA build rounds buffers up to 16 KiB,
    # the CPU build does not): all that stays alive after the evaluation, nothing more.
    alive = mx.get_active_memory() - base
    assert y.nbytes <= alive < y.nbytes + 16 * 1024, (alive, y.nbytes)
    return peak - alive


# Widths 240 and 960 both run full 120-column conv strips (strips are evened out, so
# other widths get narrower ones) and these sizes pass the cap of 64 GroupNorm chunks.
FULL_STRIPS = [(120, 240), (240, 240), (240, 960)]
OTHER_SIZES = [(64, 64), (256, 256), (97, 1001)]


@pytest.mark.parametrize("op", [conv_only, stats_only], ids=["conv3x3", "group_norm_stats"])
def test_scratch_does_not_grow_with_image_size(op):
    # 8x more pixels, the same scratch: packed weights (ceil(O/16)*9*C*16 f32 =
    # 144 KiB) + 2 workers' halo rings (3 x 122 x C + strip accumulators) for the
    # conv, 64 chunks x 32 groups of moments + 2 workers' rows for the stats.
    full = [overhead_above_output(h, w, 64, 64, op=op) for h, w in FULL_STRIPS]
    assert len(set(full)) == 1, full
    assert full[0] < 2 * MiB, full
    # Narrower strips and fewer chunks: never more.
    for h, w in OTHER_SIZES:
        over = overhead_above_output(h, w, 64, 64, op=op)
        assert over <= full[0], ((h, w), over, full)


def test_fused_scratch_is_bounded_by_its_parts():
    # The stats' scratch may still be alive while the conv allocates its own (the
    # conv is encoded while the stats run), never anything that grows with H*W.
    bound = sum(overhead_above_output(240, 960, 64, 64, op=op) for op in (conv_only, stats_only))
    # Plus the stats themselves (mean and rstd per group) and the per-channel scale
    # and shift table (3 x C f32) the normalising conv keeps in its scratch.
    bound += 2 * 32 * 4 + 3 * 64 * 4
    for h, w in FULL_STRIPS + OTHER_SIZES:
        over = overhead_above_output(h, w, 64, 64)
        assert over <= bound, ((h, w), over, bound)


def test_issue_budget_512x512_bf16_norm_silu():
    """bf16 512x512, C=O=128 with norm+SiLU: output + at most 16 MiB (mlx.nn needs ~1.5 GiB)."""
    over = overhead_above_output(512, 512, 128, 128)
    assert over <= 16 * MiB, f"{over / MiB:.1f} MiB above inputs + output"


@pytest.mark.parametrize("upsample", [1, 2])
def test_upsample_is_never_materialised(upsample):
    """With upsample=2 the output is 4x the pixels, scratch stays the same."""
    c = o = 64
    x = mx.random.normal((1, 96, 96, c)).astype(mx.bfloat16)
    weight = (mx.random.normal((o, 3, 3, c)) * 0.05).astype(mx.bfloat16)
    mx.eval(x, weight)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    y = fusedconv.conv3x3(x, weight, upsample=upsample)
    mx.eval(y)
    assert mx.get_peak_memory() - base - y.nbytes < 2 * MiB
