"""The MLX AutoencoderKL decoder: configs, scaling, bounded attention, memory floor."""

import gc

import mlx.core as mx
import pytest
from fusedconv.config import PRESETS, VAEConfig
from fusedconv import ops
from fusedconv.memory import decoder_floor_bytes, decoder_parameter_count
from fusedconv.vae import AutoencoderKLDecoder


def test_decode_latents_applies_scaling_and_shift():
    cfg = VAEConfig(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                    scaling_factor=0.5, shift_factor=0.25)
    dec = AutoencoderKLDecoder(cfg)
    lat = mx.random.normal((1, 3, 3, 4))
    assert mx.allclose(dec.decode_latents(lat), dec(lat / 0.5 + 0.25)).item()


def test_presets_have_published_values():
    assert PRESETS["flux"].latent_channels == 16 and not PRESETS["flux"].use_post_quant_conv
    assert PRESETS["sdxl"].scaling_factor == 0.13025
    assert PRESETS["sd3"].shift_factor == 0.0609


@pytest.mark.parametrize("preset", ["sd1", "flux"])
def test_parameter_count_formula_matches_model(preset):
    from mlx.utils import tree_flatten

    model = AutoencoderKLDecoder(PRESETS[preset])  # lazy init: nothing is allocated
    assert decoder_parameter_count(PRESETS[preset]) == sum(v.size for _, v in tree_flatten(model.parameters()))


@pytest.fixture
def no_attention_kernel(monkeypatch):
    """attention_bounded as on a backend without the attention kernel (a GPU): query chunks."""
    monkeypatch.setattr(ops.ext, "has_kernel", lambda op, stream=None: False, raising=False)


def test_chunked_attention_matches_full(no_attention_kernel):
    q, k, v = (mx.random.normal((2, 300, 32)) for _ in range(3))
    full = mx.fast.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=0.2)[:, 0]
    budget = 2 * 300 * 40 * (2 * 4 + 4)  # 40 rows
    assert ops.ext.attention_query_rows(2, 300, 4, budget) == 40
    got = ops.attention_bounded(q, k, v, 0.2, budget)
    assert mx.allclose(got, full, atol=1e-5).item()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "kernel"])
def test_attention_peak_stays_under_full_score_matrix(request, chunked):
    if chunked:
        request.getfixturevalue("no_attention_kernel")
    tokens, c = 4096, 64
    q, k, v = (mx.random.normal((1, tokens, c)) for _ in range(3))
    mx.eval(q, k, v)
    full_scores = tokens * tokens * 4
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(ops.attention_bounded(q, k, v, 0.125, full_scores // 16))
    assert mx.get_peak_memory() - base < full_scores // 4


def test_fused_decode_peak_near_analytic_floor():
    """Activations dominate (small channels, 256x256): fused peak within 1.15x of the floor."""
    cfg = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=16,
                    norm_num_groups=8, use_post_quant_conv=False)
    dec = AutoencoderKLDecoder(cfg)
    dec.set_dtype(mx.bfloat16)
    mx.eval(dec.parameters())
    z = mx.random.normal((1, 32, 32, 16)).astype(mx.bfloat16)
    mx.eval(z)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()  # weights + latents
    mx.eval(dec(z))
    peak = mx.get_peak_memory() - base
    floor = decoder_floor_bytes(cfg, 256, 256, mx.bfloat16) - 2 * decoder_parameter_count(cfg)
    assert peak <= 1.15 * floor, (peak / 2**20, floor / 2**20)


def test_attention_chunks_fill_the_fused_peak_not_more(no_attention_kernel, monkeypatch):
    """Without an attention kernel the mid-block attention's query chunks hold what its live set
    leaves under the decode's own peak (the 64 MiB minimum alone made a 4096^2 decode 8192 chunks
    of 32 queries), unless attention_scores_budget is set; the decode's peak stays at the floor.
    (The minimum is lowered here so that this small decode's spare room is the larger.)"""
    monkeypatch.setattr("fusedconv.decoder.ATTENTION_SCORES_BUDGET", 2**16)
    budgets = []

    def recording(q, k, v, scale, budget):
        budgets.append(budget)
        return ops.attention_bounded(q, k, v, scale, budget)

    monkeypatch.setattr("fusedconv.decoder.attention_bounded", recording)
    cfg = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=16,
                    norm_num_groups=8, use_post_quant_conv=False)
    dec = AutoencoderKLDecoder(cfg)
    dec.set_dtype(mx.bfloat16)
    mx.eval(dec.parameters())
    side = 48
    z = mx.random.normal((1, side, side, 16)).astype(mx.bfloat16)
    mx.eval(z)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(dec(z))
    used = mx.get_peak_memory() - base
    floor = decoder_floor_bytes(cfg, 8 * side, 8 * side, mx.bfloat16) - 2 * decoder_parameter_count(cfg)
    rows = ops.ext.attention_query_rows(1, side * side, 2, budgets[0])
    assert budgets[0] > 2**16 and 2 * 2**16 // (side * side * 8) < rows < side * side, (budgets, rows)
    assert used <= 1.15 * floor, (used / 2**20, floor / 2**20)

    dec.attention_scores_budget = 2**17
    budgets.clear()
    mx.eval(dec(z))
    assert budgets == [2**17]


FLUX_1024_COMPOSED = ["mid_block.resnets.0", "mid_block.resnets.1", *(f"up_blocks.{i}.resnets.{j}" for i in (0, 1)
                                                                     for j in range(3)),
                      "up_blocks.0.upsamplers.0", "up_blocks.1.upsamplers.0"]


@pytest.mark.parametrize("batch", [1, 3])
def test_wide_convs_composed_only_when_asked_and_under_the_fused_peak(batch):
    """Where wide convs prefer the composition (ops.composition_is_faster: 512 channels on MLX's
    CUDA backend), a Flux decode at 1024^2 runs the 512-channel resnets and upsamplers at 128^2
    and 256^2 through mlx.nn (cuDNN there);
    up_blocks.2.resnets.0 (512 -> 256 at 512^2) would outgrow the fused peak, so stays fused, as
    do the attention, conv_in, the narrower stages and the output head."""
    dec = AutoencoderKLDecoder(PRESETS["flux"])  # lazy: nothing allocated
    z = mx.zeros((batch, 128, 128, 16))
    assert {fn.__name__ for _, fn in dec.stages(z)} == {"fused"}  # not on MLX's CUDA backend
    assert not any(ops.composition_is_faster(c, stream=mx.cpu) for c in (128, 512, 1024))
    dec.prefer_composition = lambda channels: channels >= 512
    paths = {name: fn.__name__ for name, fn in dec.stages(z)}
    assert sorted(n for n, p in paths.items() if p == "reference") == sorted(FLUX_1024_COMPOSED)
    assert paths["mid_block.attentions.0"] == paths["up_blocks.2.resnets.0"] == "fused"
    assert {fn.__name__ for _, fn in dec.set_fused(False).stages(z)} == {"reference"}


def test_decode_with_composed_wide_convs_matches_fused():
    cfg = VAEConfig(block_out_channels=(32, 64, 512, 512), layers_per_block=1, latent_channels=4,
                    norm_num_groups=8, use_post_quant_conv=False)
    dec = AutoencoderKLDecoder(cfg)
    z = mx.random.normal((1, 4, 5, 4), key=mx.random.key(3))
    want = dec(z)
    dec.prefer_composition = lambda channels: channels >= 512
    assert any(fn.__name__ == "reference" for _, fn in dec.stages(z))
    got = dec(z)
    # f32 both ways: the composition's sums run in another order (~sqrt(9 C) * 2^-24 relative).
    assert mx.abs(got - want).max().item() <= 1e-4 * mx.abs(want).max().item()
